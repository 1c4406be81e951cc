"""Tests of the store's logic, without wasm: `python3 -m unittest`."""

import unittest

from store import Rejected, Store


class StoreTest(unittest.TestCase):
    def test_put_get_del(self):
        store = Store()
        self.assertEqual(store.apply(b"put a 1"), b"ok: a = 1")
        self.assertEqual(store.query(b"get a"), b"1")
        self.assertEqual(store.apply(b"del a"), b"ok: deleted a (was 1)")
        with self.assertRaises(Rejected):
            store.query(b"get a")
        with self.assertRaises(Rejected):
            store.apply(b"frobnicate")

    def test_a_snapshot_restores_the_same_store(self):
        store = Store()
        store.apply(b"put a 1")
        store.apply("put ключ значение".encode())
        restored = Store.restore(store.snapshot())
        self.assertEqual(restored.values, store.values)
        with self.assertRaises(Rejected):
            Store.restore(store.snapshot()[:-1])


if __name__ == "__main__":
    unittest.main()
