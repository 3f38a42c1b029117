//! A small client of the replicated key-value nodes.
//!
//! ```text
//! blobcask-raft-client --nodes 1=127.0.0.1:7001,2=127.0.0.1:7002 COMMAND
//!   init                      make the listed nodes the voters of a new cluster
//!   put KEY VALUE | delete KEY
//!   get KEY                   linearizable read through the leader
//!   add-learner ID ADDR       replicate to a new node (waits until it caught up)
//!   change-membership 1,2,3   make these the voters
//!   status                    every node's view
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

use blobcask_raft::network::{ClientReply, Rpc};
use blobcask_raft::node::Client;
use blobcask_raft::NodeId;

fn usage() -> ExitCode {
    eprintln!(
        "usage: blobcask-raft-client --nodes ID=ADDR[,ID=ADDR...] \
         (init | put K V | delete K | get K | add-learner ID ADDR | change-membership IDS | status)"
    );
    ExitCode::from(2)
}

fn parse_nodes(s: &str) -> Option<BTreeMap<NodeId, String>> {
    s.split(',')
        .map(|p| {
            let (id, addr) = p.split_once('=')?;
            Some((id.parse().ok()?, addr.to_string()))
        })
        .collect()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some("--nodes"), Some(nodes)) = (args.first().map(String::as_str), args.get(1)) else {
        return usage();
    };
    let Some(nodes) = parse_nodes(nodes) else {
        return usage();
    };
    let cmd: Vec<&str> = args[2..].iter().map(String::as_str).collect();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let mut c = Client::new(nodes.clone());
        let res = match cmd.as_slice() {
            ["init"] => match nodes.keys().next() {
                Some(&first) => {
                    c.call_node(
                        first,
                        &Rpc::Init {
                            members: nodes.clone(),
                        },
                    )
                    .await
                }
                None => return usage(),
            },
            ["put", k, v] => c
                .put(k.as_bytes(), v.as_bytes())
                .await
                .map(|index| ClientReply::Written { index }),
            ["delete", k] => c
                .delete(k.as_bytes())
                .await
                .map(|index| ClientReply::Written { index }),
            ["get", k] => c.get(k.as_bytes()).await.map(ClientReply::Value),
            ["add-learner", id, addr] => match id.parse() {
                Ok(id) => {
                    c.call(&Rpc::AddLearner {
                        id,
                        addr: addr.to_string(),
                    })
                    .await
                }
                Err(_) => return usage(),
            },
            ["change-membership", ids] => {
                match ids
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<BTreeSet<NodeId>, _>>()
                {
                    Ok(voters) => c.call(&Rpc::ChangeMembership { voters }).await,
                    Err(_) => return usage(),
                }
            }
            ["status"] => {
                for &id in nodes.keys() {
                    match c.call_node(id, &Rpc::Status).await {
                        Ok(ClientReply::Status(s)) => println!("{s:?}"),
                        Ok(other) => println!("node {id}: {other:?}"),
                        Err(e) => println!("node {id}: {e}"),
                    }
                }
                return ExitCode::SUCCESS;
            }
            _ => return usage(),
        };
        match res {
            Ok(ClientReply::Value(Some(v))) => println!("{}", String::from_utf8_lossy(&v)),
            Ok(ClientReply::Value(None)) => println!("(not found)"),
            Ok(ClientReply::Failed(e)) => {
                eprintln!("failed: {e}");
                return ExitCode::FAILURE;
            }
            Ok(r) => println!("{r:?}"),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
        ExitCode::SUCCESS
    })
}
