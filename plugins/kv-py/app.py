"""The kv store of `plugins/kv`, in Python: the same commands, answers and snapshot format, so a
running cluster can swap one for the other and back.

Commands: `put KEY VALUE`, `del KEY`. Queries: `get KEY`, `keys [PREFIX]`.
Built with componentize-py (pinned in requirements.txt) against `proto/store.wit`, world `store`:

    componentize-py -d ../../proto/store.wit -w store componentize app -o kv_py.wasm
"""

import struct

import wit_world
from componentize_py_types import Err

MAX_KEY_LEN = 1024  # bytes, as kv
MAX_KEYS_LISTED = 1000  # keys one `keys` query returns, as kv

# The state: key -> value. Sorted when it matters (snapshots, `keys`) by the keys' UTF-8
# bytes, which is the order of Rust's BTreeMap<String, _> in kv.
STATE = {}


def sorted_keys():
    return sorted(STATE, key=lambda k: k.encode())


def split_word(s):
    """`verb rest`: the first word, and the rest with leading whitespace trimmed."""
    s = s.lstrip()
    parts = s.split(None, 1)
    if not parts:
        return "", ""
    return parts[0], parts[1].lstrip() if len(parts) > 1 else ""


def checked_key(key):
    if key == "":
        raise Err("missing KEY")
    size = len(key.encode())
    if size > MAX_KEY_LEN:
        raise Err(f"key is {size} bytes; the limit is {MAX_KEY_LEN}")
    return key


def text(data):
    try:
        return bytes(data).decode()
    except UnicodeDecodeError:
        raise Err("not UTF-8 text")


# kv's snapshot, as its SDK writes it: b"RRS\x01", the format (u32, little-endian: 1), then
# bincode (standard configuration) of kv's map: its length, then each key and value as a
# length and UTF-8 bytes, sorted by key. Lengths are bincode varints: below 251 one byte, else
# 251 and a u16, 252 and a u32, 253 and a u64, little-endian.
MAGIC = b"RRS\x01"
FORMAT = 1


def varint(n):
    if n < 251:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfb" + struct.pack("<H", n)
    if n < 1 << 32:
        return b"\xfc" + struct.pack("<I", n)
    return b"\xfd" + struct.pack("<Q", n)


class WitWorld(wit_world.WitWorld):
    def apply(self, ctx, entry):
        verb, rest = split_word(text(entry))
        key, value = split_word(rest)
        if verb == "put":
            if value == "":
                raise Err("usage: put KEY VALUE")
            key, value = checked_key(key), value.rstrip()
            old = STATE.get(key)
            STATE[key] = value
            was = "(new)" if old is None else f"(was {old})"
            return f"ok: {key} = {value} {was}".encode()
        if verb == "del":
            if value != "":
                raise Err("usage: del KEY")
            key = checked_key(key)
            if key not in STATE:
                raise Err(f"no such key: {key}")
            old = STATE.pop(key)
            return f"ok: deleted {key} (was {old})".encode()
        raise Err(f'unknown command "{verb}": expected `put KEY VALUE` or `del KEY`')

    def query(self, request):
        verb, rest = split_word(text(request))
        arg, extra = split_word(rest)
        if extra != "":
            raise Err(f'unexpected "{extra}" after {verb} {arg}')
        if verb == "get":
            key = checked_key(arg)
            if key not in STATE:
                raise Err(f"no such key: {key}")
            return STATE[key].encode()
        if verb == "keys":
            keys = [k for k in sorted_keys() if k.startswith(arg)][:MAX_KEYS_LISTED]
            return "\n".join(keys).encode()
        raise Err(f'unknown query "{verb}": expected `get KEY` or `keys [PREFIX]`')

    def snapshot(self):
        out = [MAGIC, struct.pack("<I", FORMAT), varint(len(STATE))]
        for key in sorted_keys():
            for piece in (key.encode(), STATE[key].encode()):
                out.append(varint(len(piece)))
                out.append(piece)
        return b"".join(out)

    def restore(self, snapshot):
        data, at = bytes(snapshot), 0

        def take(n):
            nonlocal at
            if at + n > len(data):
                raise Err("cannot read the snapshot: it is truncated")
            piece = data[at : at + n]
            at += n
            return piece

        def length():
            first = take(1)[0]
            if first < 251:
                return first
            size = {251: 2, 252: 4, 253: 8}.get(first)
            if size is None:
                raise Err("cannot read the snapshot: a bad length")
            return int.from_bytes(take(size), "little")

        if take(4) != MAGIC:
            raise Err("not a kv snapshot")
        found = struct.unpack("<I", take(4))[0]
        if found != FORMAT:
            raise Err(f"kv-py reads snapshot format {FORMAT}, not {found}")
        fresh = {}
        for _ in range(length()):
            key = text(take(length()))
            fresh[key] = text(take(length()))
        if at != len(data):
            raise Err("the snapshot has bytes after the store's")
        STATE.clear()
        STATE.update(fresh)
