//! Shared helpers of the integration suites: seeds and replay ([`seed`]), the expected-state
//! [`oracle`], blobstore consistency checks ([`fsck`]) and small stores with seeded workloads
//! ([`harness`]). See `tests/README.md` for the fault model and the suites.

pub mod backend;
pub mod damage;
pub mod fsck;
pub mod fuzz;
pub mod harness;
pub mod killswitch;
pub mod oracle;
pub mod seed;
pub mod suite;
