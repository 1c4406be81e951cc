// Tests of the store as it is, without wasm: `node --test`.
import assert from "node:assert/strict";
import { test } from "node:test";

import { apply, query, restore, snapshot } from "./store.js";

const utf8 = new TextEncoder();
const text = (bytes) => new TextDecoder().decode(bytes);

test("put, get, del", () => {
  restore(new Uint8Array());
  assert.equal(text(apply({}, utf8.encode("put a 1"))), "ok: a = 1");
  assert.equal(text(query(utf8.encode("get a"))), "1");
  assert.equal(text(apply({}, utf8.encode("del a"))), "ok: deleted a (was 1)");
  assert.throws(() => query(utf8.encode("get a")), /no such key: a/);
  assert.throws(() => apply({}, utf8.encode("frobnicate")), /unknown command/);
});

test("a snapshot restores the same store", () => {
  restore(new Uint8Array());
  apply({}, utf8.encode("put a 1"));
  apply({}, utf8.encode("put ключ значение"));
  const bytes = snapshot();
  restore(new Uint8Array());
  restore(bytes);
  assert.deepEqual(snapshot(), bytes);
  assert.equal(text(query(utf8.encode("get ключ"))), "значение");
  assert.throws(() => restore(bytes.subarray(0, bytes.length - 1)), /truncated/);
});
