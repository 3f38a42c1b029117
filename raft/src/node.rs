//! A replicated key-value node: a blobcask store under a directory, openraft, and a TCP
//! server for peers and clients ([`crate::network`]); and [`Client`], which finds the leader.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, Config, SnapshotPolicy};
use tokio::net::{TcpListener, TcpStream};

use crate::network::{read_frame, write_frame, ClientReply, Conn, Network, Reply, Rpc, Status};
use crate::{Kv, NodeId, Raft, Request};

/// How a node is started.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub id: NodeId,
    /// `host:port` to listen on (and the address peers know the node by).
    pub addr: String,
    /// Holds `store.img` (the blobcask image) and `snapshots/`.
    pub dir: PathBuf,
    /// Size of the image file when created.
    pub device_size: u64,
    /// Build a snapshot (and purge the log) every this many applied entries.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot (a follower further behind is sent the
    /// snapshot).
    pub keep_logs: u64,
}

impl NodeOptions {
    pub fn new(id: NodeId, addr: impl Into<String>, dir: impl Into<PathBuf>) -> NodeOptions {
        NodeOptions {
            id,
            addr: addr.into(),
            dir: dir.into(),
            device_size: 1 << 30,
            snapshot_every: 10_000,
            keep_logs: 1000,
        }
    }
}

/// A running node.
pub struct Node {
    pub id: NodeId,
    pub raft: Raft,
    pub kv: Kv,
    pub addr: String,
}

/// Errors of starting a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Storage(#[from] crate::Error),
    #[error("openraft: {0}")]
    Raft(String),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// Open the node's store, start openraft and serve `opts.addr` (until the process ends).
pub async fn start(opts: NodeOptions) -> Result<Arc<Node>, NodeError> {
    std::fs::create_dir_all(&opts.dir).map_err(crate::Error::from)?;
    let mut sopts = crate::store_options(blobcask::DeviceSpec::Path(opts.dir.join("store.img")));
    sopts.device_size = opts.device_size;
    let db = blobcask::Db::open(sopts).map_err(crate::Error::from)?;
    let (log, sm) = crate::open(db, Some(opts.dir.join("snapshots")))?;
    let kv = sm.kv();
    let config = Config {
        cluster_name: "blobcask".into(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(opts.snapshot_every),
        max_in_snapshot_log_to_keep: opts.keep_logs,
        ..Default::default()
    };
    let config = Arc::new(
        config
            .validate()
            .map_err(|e| NodeError::Raft(e.to_string()))?,
    );
    let raft = Raft::new(opts.id, config, Network, log, sm)
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
    let listener = TcpListener::bind(&opts.addr)
        .await
        .map_err(|source| NodeError::Listen {
            addr: opts.addr.clone(),
            source,
        })?;
    let node = Arc::new(Node {
        id: opts.id,
        raft,
        kv,
        addr: opts.addr,
    });
    let n = node.clone();
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    let n = n.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(n, s).await {
                            log::debug!("connection: {e}");
                        }
                    });
                }
                Err(e) => log::warn!("accept: {e}"),
            }
        }
    });
    Ok(node)
}

async fn serve(node: Arc<Node>, mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    while let Some(rpc) = read_frame::<Rpc>(&mut s).await? {
        let reply = node.handle(rpc).await;
        write_frame(&mut s, &reply).await?;
    }
    Ok(())
}

fn leader_hint<E>(e: &RaftError<NodeId, E>) -> Option<Option<(NodeId, String)>>
where
    E: std::error::Error + TryAsForward,
{
    match e {
        RaftError::APIError(e) => e.forward(),
        RaftError::Fatal(_) => None,
    }
}

/// The errors that may say "ask the leader".
trait TryAsForward {
    fn forward(&self) -> Option<Option<(NodeId, String)>>;
}

impl TryAsForward for ClientWriteError<NodeId, BasicNode> {
    fn forward(&self) -> Option<Option<(NodeId, String)>> {
        match self {
            ClientWriteError::ForwardToLeader(f) => Some(
                f.leader_id
                    .zip(f.leader_node.as_ref().map(|n| n.addr.clone())),
            ),
            ClientWriteError::ChangeMembershipError(_) => None,
        }
    }
}

impl TryAsForward for CheckIsLeaderError<NodeId, BasicNode> {
    fn forward(&self) -> Option<Option<(NodeId, String)>> {
        match self {
            CheckIsLeaderError::ForwardToLeader(f) => Some(
                f.leader_id
                    .zip(f.leader_node.as_ref().map(|n| n.addr.clone())),
            ),
            CheckIsLeaderError::QuorumNotEnough(_) => Some(None),
        }
    }
}

fn client_err<E>(e: RaftError<NodeId, E>) -> ClientReply
where
    E: std::error::Error + TryAsForward,
{
    match leader_hint(&e) {
        Some(leader) => ClientReply::NotLeader { leader },
        None => ClientReply::Failed(e.to_string()),
    }
}

impl Node {
    /// Answer one request.
    pub async fn handle(&self, rpc: Rpc) -> Reply {
        match rpc {
            Rpc::AppendEntries(r) => Reply::AppendEntries(self.raft.append_entries(r).await),
            Rpc::Vote(r) => Reply::Vote(self.raft.vote(r).await),
            Rpc::InstallSnapshot(r) => Reply::InstallSnapshot(self.raft.install_snapshot(r).await),
            other => Reply::Client(self.client(other).await),
        }
    }

    async fn client(&self, rpc: Rpc) -> ClientReply {
        match rpc {
            Rpc::Write(req) => match self.raft.client_write(req).await {
                Ok(r) => ClientReply::Written {
                    index: r.log_id.index,
                },
                Err(e) => client_err(e),
            },
            Rpc::Read { key, linearizable } => {
                if linearizable {
                    if let Err(e) = self.raft.ensure_linearizable().await {
                        return client_err(e);
                    }
                }
                match self.kv.get(&key) {
                    Ok(v) => ClientReply::Value(v),
                    Err(e) => ClientReply::Failed(e.to_string()),
                }
            }
            Rpc::Init { members } => {
                let nodes: BTreeMap<NodeId, BasicNode> = members
                    .into_iter()
                    .map(|(id, addr)| (id, BasicNode::new(addr)))
                    .collect();
                match self.raft.initialize(nodes).await {
                    Ok(()) => ClientReply::Done,
                    Err(e) => ClientReply::Failed(e.to_string()),
                }
            }
            Rpc::AddLearner { id, addr } => {
                match self.raft.add_learner(id, BasicNode::new(addr), true).await {
                    Ok(_) => ClientReply::Done,
                    Err(e) => client_err(e),
                }
            }
            Rpc::ChangeMembership { voters } => {
                match self.raft.change_membership(voters, false).await {
                    Ok(_) => ClientReply::Done,
                    Err(e) => client_err(e),
                }
            }
            Rpc::Status => ClientReply::Status(self.status()),
            Rpc::AppendEntries(_) | Rpc::Vote(_) | Rpc::InstallSnapshot(_) => {
                ClientReply::Failed("not a client request".into())
            }
        }
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> Status {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        Status {
            id: self.id,
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            last_purged: m.purged.map(|l| l.index),
            snapshot: m.snapshot.map(|l| l.index),
            voters: membership.voter_ids().collect(),
            nodes: membership
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect(),
        }
    }
}

/// Errors of a [`Client`] request.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no leader answered within {0:?}")]
    NoLeader(Duration),
    #[error("request failed: {0}")]
    Failed(String),
}

/// A client of the cluster: sends each request to the node it believes leads, follows
/// "not the leader" answers and retries other nodes until `timeout`.
pub struct Client {
    nodes: BTreeMap<NodeId, Conn>,
    leader: Option<NodeId>,
    pub timeout: Duration,
}

impl Client {
    pub fn new(nodes: impl IntoIterator<Item = (NodeId, String)>) -> Client {
        Client {
            nodes: nodes
                .into_iter()
                .map(|(id, a)| (id, Conn::new(a)))
                .collect(),
            leader: None,
            timeout: Duration::from_secs(10),
        }
    }

    /// Send `rpc` to one node (no leader search).
    pub async fn call_node(&mut self, id: NodeId, rpc: &Rpc) -> Result<ClientReply, ClientError> {
        let c = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| ClientError::Failed(format!("unknown node {id}")))?;
        match tokio::time::timeout(self.timeout, c.call(rpc)).await {
            Ok(Ok(Reply::Client(r))) => Ok(r),
            Ok(Ok(_)) => Err(ClientError::Failed("unexpected reply".into())),
            Ok(Err((_, e))) => Err(ClientError::Failed(e.to_string())),
            Err(_) => Err(ClientError::Failed("timed out".into())),
        }
    }

    /// Send `rpc` to the leader, wherever it is.
    pub async fn call(&mut self, rpc: &Rpc) -> Result<ClientReply, ClientError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let mut next = 0usize;
        loop {
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::NoLeader(self.timeout));
            }
            let id = match self.leader {
                Some(l) => l,
                None => {
                    next += 1;
                    ids[next % ids.len().max(1)]
                }
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(c) = self.nodes.get_mut(&id) else {
                self.leader = None;
                continue;
            };
            let r = tokio::time::timeout(left.min(Duration::from_secs(3)), c.call(rpc)).await;
            match r {
                Ok(Ok(Reply::Client(ClientReply::NotLeader { leader }))) => {
                    self.leader = None;
                    if let Some((lid, addr)) = leader {
                        self.nodes.entry(lid).or_insert_with(|| Conn::new(addr));
                        if lid != id {
                            self.leader = Some(lid);
                            continue;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Ok(Reply::Client(r))) => {
                    self.leader = Some(id);
                    return Ok(r);
                }
                Ok(Ok(_)) => return Err(ClientError::Failed("unexpected reply".into())),
                Ok(Err(_)) | Err(_) => {
                    // Down or unreachable: try the next node.
                    self.leader = None;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Replicate a put; returns its log index once applied on the leader.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<u64, ClientError> {
        self.write(Request::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        })
        .await
    }

    pub async fn delete(&mut self, key: &[u8]) -> Result<u64, ClientError> {
        self.write(Request::Delete { key: key.to_vec() }).await
    }

    async fn write(&mut self, req: Request) -> Result<u64, ClientError> {
        match self.call(&Rpc::Write(req)).await? {
            ClientReply::Written { index } => Ok(index),
            other => Err(ClientError::Failed(format!("{other:?}"))),
        }
    }

    /// A linearizable read (through the leader).
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        match self
            .call(&Rpc::Read {
                key: key.to_vec(),
                linearizable: true,
            })
            .await?
        {
            ClientReply::Value(v) => Ok(v),
            other => Err(ClientError::Failed(format!("{other:?}"))),
        }
    }

    /// The leader, as the nodes see it.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
}
