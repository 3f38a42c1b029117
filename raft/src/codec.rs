//! Encoding of stored values and of network frames (bincode), and the storage error helpers.

use openraft::{AnyError, StorageError, StorageIOError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::NodeId;

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, bincode::Error> {
    bincode::serialize(v)
}

pub(crate) fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, bincode::Error> {
    bincode::deserialize(b)
}

pub(crate) fn decode_as<T: DeserializeOwned>(
    b: &[u8],
    what: &'static str,
) -> Result<T, crate::Error> {
    decode(b).map_err(|source| crate::Error::Decode { what, source })
}

type IoErr = StorageIOError<NodeId>;

pub(crate) fn read_logs(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    IoErr::read_logs(AnyError::new(&e)).into()
}
pub(crate) fn write_logs(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    IoErr::write_logs(AnyError::new(&e)).into()
}
pub(crate) fn read_vote(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    IoErr::read_vote(AnyError::new(&e)).into()
}
pub(crate) fn write_vote(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    IoErr::write_vote(AnyError::new(&e)).into()
}
pub(crate) fn read_sm(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    IoErr::read_state_machine(AnyError::new(&e)).into()
}
pub(crate) fn write_sm(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    IoErr::write_state_machine(AnyError::new(&e)).into()
}
pub(crate) fn read_snapshot(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    IoErr::read_snapshot(None, AnyError::new(&e)).into()
}
pub(crate) fn write_snapshot(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    IoErr::write_snapshot(None, AnyError::new(&e)).into()
}
