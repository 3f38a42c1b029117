//! A plain TCP transport: each message is a big-endian u32 length and a bincode body, over
//! one `TcpStream` per peer (requests and replies alternate on it). Raft RPCs and client
//! requests share the framing and a node's one listening port.

use std::collections::{BTreeMap, BTreeSet};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{NodeId, Request, TypeConfig};

/// Largest frame accepted (a snapshot chunk or an append of many entries).
pub const MAX_FRAME: usize = 256 << 20;

/// A request to a node.
#[derive(Debug, Serialize, Deserialize)]
pub enum Rpc {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Propose a write; answered once it is committed and applied.
    Write(Request),
    /// Read a key: `linearizable` asks the leader to confirm its leadership and waits until
    /// this node applied up to the read point; otherwise the node's applied state is read.
    Read {
        key: Vec<u8>,
        linearizable: bool,
    },
    /// Initialize a new cluster with these members (id, address).
    Init {
        members: BTreeMap<NodeId, String>,
    },
    AddLearner {
        id: NodeId,
        addr: String,
    },
    ChangeMembership {
        voters: BTreeSet<NodeId>,
    },
    Status,
}

/// A node's answer to a client request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientReply {
    /// A write was applied at this log index.
    Written {
        index: u64,
    },
    Value(Option<Vec<u8>>),
    Done,
    Status(Status),
    /// Not the leader: ask this one (when known).
    NotLeader {
        leader: Option<(NodeId, String)>,
    },
    Failed(String),
}

/// What [`Rpc::Status`] answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub id: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    /// The last log index purged behind a snapshot.
    pub last_purged: Option<u64>,
    /// The last log index of the current snapshot.
    pub snapshot: Option<u64>,
    pub voters: BTreeSet<NodeId>,
    pub nodes: BTreeMap<NodeId, String>,
}

/// A node's reply.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Client(ClientReply),
}

fn invalid(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

/// Write one frame.
pub async fn write_frame<T: Serialize>(s: &mut TcpStream, msg: &T) -> std::io::Result<()> {
    let body = bincode::serialize(msg).map_err(invalid)?;
    if body.len() > MAX_FRAME {
        return Err(invalid("frame too large"));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    s.write_all(&buf).await
}

/// Read one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame<T: DeserializeOwned>(s: &mut TcpStream) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(invalid("frame too large"));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    bincode::deserialize(&body).map(Some).map_err(invalid)
}

/// A request-reply connection that reconnects after an error.
pub struct Conn {
    addr: String,
    stream: Option<TcpStream>,
}

impl Conn {
    pub fn new(addr: impl Into<String>) -> Conn {
        Conn {
            addr: addr.into(),
            stream: None,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Send `rpc` and wait for the reply. A connection that failed is dropped (the next call
    /// reconnects). `Err((true, _))`: could not connect.
    pub async fn call(&mut self, rpc: &Rpc) -> Result<Reply, (bool, std::io::Error)> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.addr)
                .await
                .map_err(|e| (true, e))?;
            s.set_nodelay(true).map_err(|e| (true, e))?;
            self.stream = Some(s);
        }
        let Some(s) = self.stream.as_mut() else {
            return Err((true, std::io::Error::other("no connection")));
        };
        let res = async {
            write_frame(s, rpc).await?;
            read_frame::<Reply>(s)
                .await?
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"))
        }
        .await;
        if res.is_err() {
            self.stream = None;
        }
        res.map_err(|e| (false, e))
    }
}

/// openraft's network: one [`Peer`] per target.
#[derive(Clone, Default)]
pub struct Network;

/// The connection to one peer.
pub struct Peer {
    target: NodeId,
    conn: Conn,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            conn: Conn::new(node.addr.clone()),
        }
    }
}

impl Peer {
    async fn rpc<E: std::error::Error>(
        &mut self,
        rpc: Rpc,
        option: &RPCOption,
    ) -> Result<Reply, RPCError<NodeId, BasicNode, E>> {
        match tokio::time::timeout(option.hard_ttl(), self.conn.call(&rpc)).await {
            Err(_) => {
                self.conn.stream = None;
                Err(RPCError::Network(NetworkError::new(&std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "rpc timed out",
                ))))
            }
            Ok(Err((true, e))) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Ok(Err((false, e))) => Err(RPCError::Network(NetworkError::new(&e))),
            Ok(Ok(r)) => Ok(r),
        }
    }

    fn unexpected<E: std::error::Error>() -> RPCError<NodeId, BasicNode, E> {
        RPCError::Network(NetworkError::new(&invalid("unexpected reply")))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.rpc(Rpc::AppendEntries(rpc), &option).await? {
            Reply::AppendEntries(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(Self::unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.rpc(Rpc::InstallSnapshot(rpc), &option).await? {
            Reply::InstallSnapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(Self::unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.rpc(Rpc::Vote(rpc), &option).await? {
            Reply::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(Self::unexpected()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::error::Fatal;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn frames_carry_requests_replies_and_errors() {
        let (mut a, mut b) = pair().await;
        write_frame(
            &mut a,
            &Rpc::Read {
                key: b"k".to_vec(),
                linearizable: true,
            },
        )
        .await
        .unwrap();
        let r: Rpc = read_frame(&mut b).await.unwrap().unwrap();
        assert!(matches!(r, Rpc::Read { key, linearizable: true } if key == b"k"));
        // openraft's errors go through bincode too.
        write_frame(&mut b, &Reply::Vote(Err(RaftError::Fatal(Fatal::Stopped))))
            .await
            .unwrap();
        let r: Reply = read_frame(&mut a).await.unwrap().unwrap();
        assert!(matches!(
            r,
            Reply::Vote(Err(RaftError::Fatal(Fatal::Stopped)))
        ));
        write_frame(
            &mut b,
            &Reply::Client(ClientReply::NotLeader {
                leader: Some((2, "x".into())),
            }),
        )
        .await
        .unwrap();
        let r: Reply = read_frame(&mut a).await.unwrap().unwrap();
        assert!(matches!(
            r,
            Reply::Client(ClientReply::NotLeader {
                leader: Some((2, _))
            })
        ));
        drop(b);
        assert!(
            read_frame::<Reply>(&mut a).await.unwrap().is_none(),
            "clean end of stream"
        );
    }

    #[tokio::test]
    async fn bad_frames_are_errors() {
        let (mut a, mut b) = pair().await;
        // Too long.
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(read_frame::<Rpc>(&mut b).await.is_err());
        // Not an Rpc.
        let (mut a, mut b) = pair().await;
        a.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await.unwrap();
        assert!(read_frame::<Rpc>(&mut b).await.is_err());
        // Cut short.
        let (mut a, mut b) = pair().await;
        a.write_all(&[0, 0, 0, 9, 1]).await.unwrap();
        drop(a);
        assert!(read_frame::<Rpc>(&mut b).await.is_err());
    }
}
