/** A tensor dimension: a known size, or a symbol (a graph input's dim_param, or an expression of them). */
export type Dim = number | string;
export type Shape = Dim[];

/** Shapes known for tensors of a graph, by tensor name; a missing entry means "unknown". */
export type ShapeMap = Map<string, Shape>;
