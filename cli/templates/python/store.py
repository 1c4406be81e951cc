"""{{name}}: the store's logic, a map of text keys to text values, in plain Python (tested with
`python3 -m unittest`; `app.py` binds it to RiteRaft's contract).

Commands (replicated, through `riteraft propose`): `put KEY VALUE`, `del KEY`.
Queries (read-only, through `riteraft query`): `get KEY`.

Every replica applies the same commands in the same order and must end in the same state, so
nothing here may depend on the clock, randomness, or the order of a set.
"""

import struct


class Rejected(Exception):
    """A command or query the store says no to: the client sees the message."""


def split_word(text):
    """The first word of `text` and the rest, trimmed."""
    parts = text.strip().split(None, 1)
    if not parts:
        return "", ""
    return parts[0], parts[1].strip() if len(parts) > 1 else ""


def decode(data):
    try:
        return bytes(data).decode()
    except UnicodeDecodeError:
        raise Rejected("not UTF-8 text")


class Store:
    def __init__(self):
        self.values = {}

    def apply(self, command):
        """Applies one command and answers it; a rejection must leave the state as it was."""
        verb, rest = split_word(decode(command))
        if verb == "put":
            key, value = split_word(rest)
            if key == "" or value == "":
                raise Rejected("usage: put KEY VALUE")
            self.values[key] = value
            return f"ok: {key} = {value}".encode()
        if verb == "del":
            if rest not in self.values:
                raise Rejected(f"no such key: {rest}")
            old = self.values.pop(rest)
            return f"ok: deleted {rest} (was {old})".encode()
        raise Rejected(f'unknown command "{verb}": expected put or del')

    def query(self, request):
        verb, key = split_word(decode(request))
        if verb != "get":
            raise Rejected(f'unknown query "{verb}": expected get')
        if key not in self.values:
            raise Rejected(f"no such key: {key}")
        return self.values[key].encode()

    def snapshot(self):
        """For each key in the order of its UTF-8 bytes, its length (u32, little-endian) and
        bytes, then its value's: the format of the Rust and JavaScript templates too."""
        out = []
        for key in sorted(self.values, key=str.encode):
            for text in (key.encode(), self.values[key].encode()):
                out.append(struct.pack("<I", len(text)))
                out.append(text)
        return b"".join(out)

    @staticmethod
    def restore(data):
        data, at, store = bytes(data), 0, Store()

        def take_text():
            nonlocal at
            if at + 4 > len(data):
                raise Rejected("the snapshot is truncated")
            (size,) = struct.unpack_from("<I", data, at)
            if at + 4 + size > len(data):
                raise Rejected("the snapshot is truncated")
            text = decode(data[at + 4 : at + 4 + size])
            at += 4 + size
            return text

        while at < len(data):
            key = take_text()
            store.values[key] = take_text()
        return store
