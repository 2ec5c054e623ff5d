"""The absl binaries: thin wrappers that parse flags and call the library."""
