/**
 * Copy-on-write for protobuf messages: a shallow copy that keeps the message's prototype (proto2
 * field presence lives there) and its unknown fields, so a pass never mutates the input model.
 */
export function shallowCopy<T extends object>(message: T, patch: Partial<T> = {}): T {
  const copy = Object.create(Object.getPrototypeOf(message) as object | null) as T;
  return Object.assign(copy, message, patch);
}
