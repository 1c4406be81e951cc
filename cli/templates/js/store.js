// {{name}}: a RiteRaft store, a map of text keys to text values. The four exports are RiteRaft's
// contract, `wit/store.wit` (world `store`); componentize-js builds this file into a
// WebAssembly component (see README.md), and `node --test` tests it as it is.
//
// Commands (replicated, through `riteraft propose`): `put KEY VALUE`, `del KEY`.
// Queries (read-only, through `riteraft query`): `get KEY`.
//
// Every replica applies the same commands in the same order and must end in the same state,
// so nothing here may depend on the clock or randomness. A thrown string is a rejection: the
// client sees it, and the state must be left as it was.

const utf8 = new TextEncoder();
const text = new TextDecoder("utf-8", { fatal: true });

// One instance per replica: RiteRaft calls the exports one at a time, in log order.
let values = new Map();

// The first word of `s` and the rest, trimmed.
function splitWord(s) {
  s = s.trim();
  const at = s.search(/\s/);
  return at < 0 ? [s, ""] : [s.slice(0, at), s.slice(at).trim()];
}

function decode(bytes) {
  try {
    return text.decode(bytes);
  } catch {
    throw "not UTF-8 text";
  }
}

export function apply(_ctx, command) {
  const [verb, rest] = splitWord(decode(command));
  if (verb === "put") {
    const [key, value] = splitWord(rest);
    if (key === "" || value === "") throw "usage: put KEY VALUE";
    values.set(key, value);
    return utf8.encode(`ok: ${key} = ${value}`);
  }
  if (verb === "del") {
    const old = values.get(rest);
    if (old === undefined) throw `no such key: ${rest}`;
    values.delete(rest);
    return utf8.encode(`ok: deleted ${rest} (was ${old})`);
  }
  throw `unknown command ${JSON.stringify(verb)}: expected put or del`;
}

export function query(request) {
  const [verb, key] = splitWord(decode(request));
  if (verb !== "get") throw `unknown query ${JSON.stringify(verb)}: expected get`;
  const value = values.get(key);
  if (value === undefined) throw `no such key: ${key}`;
  return utf8.encode(value);
}

function compareBytes(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

// For each key in the order of its UTF-8 bytes, its length (u32, little-endian) and bytes,
// then its value's: the format of the Rust and Python templates too.
export function snapshot() {
  const out = [];
  const keys = [...values.keys()].map((key) => utf8.encode(key)).sort(compareBytes);
  for (const key of keys) {
    for (const piece of [key, utf8.encode(values.get(text.decode(key)))]) {
      const len = new Uint8Array(4);
      new DataView(len.buffer).setUint32(0, piece.length, true);
      out.push(len, piece);
    }
  }
  const bytes = new Uint8Array(out.reduce((n, piece) => n + piece.length, 0));
  out.reduce((at, piece) => (bytes.set(piece, at), at + piece.length), 0);
  return bytes;
}

export function restore(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const restored = new Map();
  let at = 0;
  const takeText = () => {
    if (at + 4 > bytes.length) throw "the snapshot is truncated";
    const len = view.getUint32(at, true);
    if (at + 4 + len > bytes.length) throw "the snapshot is truncated";
    const piece = decode(bytes.subarray(at + 4, at + 4 + len));
    at += 4 + len;
    return piece;
  };
  while (at < bytes.length) {
    const key = takeText();
    restored.set(key, takeText());
  }
  values = restored;
}
