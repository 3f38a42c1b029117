//! Safe async wrapper over SPDK. Empty when SPDK was not found at build time.
