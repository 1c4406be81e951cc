// The kv store of `plugins/kv`, in JavaScript: the same commands, answers and snapshot format,
// so a running cluster can swap one for the other (`riteraft deploy`) and back.
//
// Commands: `put KEY VALUE`, `del KEY`. Queries: `get KEY`, `keys [PREFIX]`.
// Built with componentize-js against `proto/store.wit` (world `store`); see README.md.

const MAX_KEY_LEN = 1024; // bytes, as kv
const MAX_KEYS_LISTED = 1000; // keys one `keys` query returns, as kv

const utf8 = new TextEncoder();
const text = new TextDecoder("utf-8", { fatal: true });

// The state: key -> value. Kept sorted only when it matters (snapshots, `keys`), by the
// keys' UTF-8 bytes, which is the order of Rust's BTreeMap<String, _> in kv.
const map = new Map();

function compareBytes(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

function sortedKeys() {
  return [...map.keys()]
    .map((key) => [utf8.encode(key), key])
    .sort((a, b) => compareBytes(a[0], b[0]))
    .map(([, key]) => key);
}

// `verb rest`: the first word, and the rest with leading whitespace trimmed (as kv's split_word).
function splitWord(s) {
  s = s.trimStart();
  const at = s.search(/\s/);
  return at < 0 ? [s, ""] : [s.slice(0, at), s.slice(at).trimStart()];
}

function checkedKey(key) {
  if (key === "") throw "missing KEY";
  const len = utf8.encode(key).length;
  if (len > MAX_KEY_LEN) throw `key is ${len} bytes; the limit is ${MAX_KEY_LEN}`;
  return key;
}

function decode(bytes) {
  try {
    return text.decode(bytes);
  } catch {
    throw "not UTF-8 text";
  }
}

export function apply(_ctx, entry) {
  const [verb, rest] = splitWord(decode(entry));
  const [key, value] = splitWord(rest);
  if (verb === "put") {
    if (value === "") throw "usage: put KEY VALUE";
    const k = checkedKey(key);
    const v = value.trimEnd();
    const old = map.get(k);
    map.set(k, v);
    return utf8.encode(old === undefined ? `ok: ${k} = ${v} (new)` : `ok: ${k} = ${v} (was ${old})`);
  }
  if (verb === "del") {
    if (value !== "") throw "usage: del KEY";
    const k = checkedKey(key);
    const old = map.get(k);
    if (old === undefined) throw `no such key: ${k}`;
    map.delete(k);
    return utf8.encode(`ok: deleted ${k} (was ${old})`);
  }
  throw `unknown command ${JSON.stringify(verb)}: expected \`put KEY VALUE\` or \`del KEY\``;
}

export function query(request) {
  const [verb, rest] = splitWord(decode(request));
  const [arg, extra] = splitWord(rest);
  if (extra !== "") throw `unexpected ${JSON.stringify(extra)} after ${verb} ${arg}`;
  if (verb === "get") {
    const k = checkedKey(arg);
    const value = map.get(k);
    if (value === undefined) throw `no such key: ${k}`;
    return utf8.encode(value);
  }
  if (verb === "keys") {
    const keys = sortedKeys().filter((k) => k.startsWith(arg)).slice(0, MAX_KEYS_LISTED);
    return utf8.encode(keys.join("\n"));
  }
  throw `unknown query ${JSON.stringify(verb)}: expected \`get KEY\` or \`keys [PREFIX]\``;
}

// The snapshot, as kv's SDK writes it: "RRS\x01", the format (u32, little-endian: 1), then
// bincode (standard configuration) of kv's store: the map's length, then each key and value
// as a length and UTF-8 bytes, sorted by key. Lengths are bincode varints: below 251 one byte,
// else 251 and a u16, 252 and a u32, 253 and a u64, little-endian.
const MAGIC = [0x52, 0x52, 0x53, 0x01];
const FORMAT = 1;

function pushVarint(out, n) {
  if (n < 251) out.push(n);
  else if (n < 0x10000) out.push(251, n & 0xff, n >>> 8);
  else if (n < 0x100000000) out.push(252, n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, n >>> 24);
  else throw "a length beyond 4 GiB";
}

function pushBytes(out, bytes) {
  pushVarint(out, bytes.length);
  for (const b of bytes) out.push(b);
}

export function snapshot() {
  const out = [...MAGIC, FORMAT, 0, 0, 0];
  pushVarint(out, map.size);
  for (const key of sortedKeys()) {
    pushBytes(out, utf8.encode(key));
    pushBytes(out, utf8.encode(map.get(key)));
  }
  return Uint8Array.from(out);
}

export function restore(bytes) {
  let at = 0;
  const take = (n) => {
    if (at + n > bytes.length) throw "cannot read the snapshot: it is truncated";
    const piece = bytes.subarray(at, at + n);
    at += n;
    return piece;
  };
  const le = (piece) => piece.reduceRight((n, b) => n * 256 + b, 0);
  const varint = () => {
    const first = take(1)[0];
    if (first < 251) return first;
    if (first === 251) return le(take(2));
    if (first === 252) return le(take(4));
    if (first === 253) return le(take(8));
    throw "cannot read the snapshot: a bad length";
  };
  const stamp = take(8);
  if (!MAGIC.every((b, i) => stamp[i] === b)) throw "not a kv snapshot";
  const format = le(stamp.subarray(4));
  if (format !== FORMAT) throw `kv-js reads snapshot format ${FORMAT}, not ${format}`;
  const fresh = new Map();
  for (let n = varint(); n > 0; n--) {
    const key = decode(take(varint()));
    fresh.set(key, decode(take(varint())));
  }
  if (at !== bytes.length) throw "the snapshot has bytes after the store's";
  map.clear();
  for (const [k, v] of fresh) map.set(k, v);
}
