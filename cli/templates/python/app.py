"""{{name}}: binds `store.Store` to RiteRaft's contract, `wit/store.wit` (world `store`).
Built into a WebAssembly component with componentize-py (see README.md)."""

import wit_world
from componentize_py_types import Err

from store import Rejected, Store

# One instance per replica: RiteRaft calls the exports one at a time, in log order.
STORE = Store()


class WitWorld(wit_world.WitWorld):
    def apply(self, ctx, entry):
        try:
            return STORE.apply(entry)
        except Rejected as why:
            raise Err(str(why))

    def query(self, request):
        try:
            return STORE.query(request)
        except Rejected as why:
            raise Err(str(why))

    def snapshot(self):
        return STORE.snapshot()

    def restore(self, snapshot):
        global STORE
        try:
            STORE = Store.restore(snapshot)
        except Rejected as why:
            raise Err(str(why))
