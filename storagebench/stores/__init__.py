"""Store bindings under test, behind one interface. Add a store by adding one module here."""

from storagebench.stores.base import Store, StoreError, open_store, register_store, store_class, store_names

__all__ = ["Store", "StoreError", "open_store", "register_store", "store_class", "store_names"]
