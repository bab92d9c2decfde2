"""Storage backends: each implements :class:`wfstate.store.Store`."""
