//! `rota kv`: etcdctl v2's key commands through `rota-client`, with etcdctl's output: the
//! value on stdout, errors as `Error:  100: Key not found (/foo) [12]` on stderr, and
//! etcdctl's exit codes (4 server error, 2 unreachable, 1 other).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use rota_client::{
    Client, Error, GetOptions, KvResponse, Node, RmOptions, SetOptions, WatchOptions,
};

/// etcdctl's exit codes.
const EXIT_BAD_ARGS: u8 = 1;
const EXIT_BAD_CONNECTION: u8 = 2;
const EXIT_SERVER_ERROR: u8 = 4;

#[derive(Debug, Args)]
pub struct KvArgs {
    /// Comma-separated client URLs, tried in order.
    #[arg(
        long,
        global = true,
        env = "ROTA_ENDPOINTS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoints: String,
    #[command(subcommand)]
    pub command: KvCommand,
}

#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Print a key's value.
    Get {
        /// The key (a path such as `/config/db`; a leading `/` is optional).
        key: String,
        /// Read through Raft (linearizable).
        #[arg(long)]
        quorum: bool,
    },
    /// Set a key's value (creating it if needed) and print it.
    Set {
        /// The key (a path such as `/config/db`; a leading `/` is optional).
        key: String,
        /// The value.
        value: String,
        /// Seconds until the key expires (0: never, as etcdctl's default).
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<u64>,
        /// Only if the current value is this (compare-and-swap).
        #[arg(long)]
        swap_with_value: Option<String>,
        /// Only if the current modifiedIndex is this (compare-and-swap).
        #[arg(long)]
        swap_with_index: Option<u64>,
    },
    /// Create a key only if it doesn't exist, and print its value.
    Mk {
        /// The key (a path such as `/config/db`; a leading `/` is optional).
        key: String,
        /// The value.
        value: String,
        /// Seconds until the key expires (0: never, as etcdctl's default).
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<u64>,
        /// Create a new in-order key under the directory KEY instead.
        #[arg(long)]
        in_order: bool,
    },
    /// Remove a key (or a directory with --dir / --recursive).
    Rm {
        /// The key (a path such as `/config/db`; a leading `/` is optional).
        key: String,
        /// Remove an empty directory (or a key).
        #[arg(long)]
        dir: bool,
        /// Remove a directory and everything below it.
        #[arg(long)]
        recursive: bool,
        /// Only if the current value is this (compare-and-delete).
        #[arg(long)]
        with_value: Option<String>,
        /// Only if the current modifiedIndex is this (compare-and-delete).
        #[arg(long)]
        with_index: Option<u64>,
    },
    /// List a directory's keys, sorted.
    Ls {
        /// The directory.
        #[arg(default_value = "/")]
        key: String,
        /// List the whole subtree.
        #[arg(long)]
        recursive: bool,
        /// Append `/` to directories.
        #[arg(short = 'p')]
        slash_dirs: bool,
    },
    /// Wait for a change of a key and print the new value.
    Watch {
        /// The key (a path such as `/config/db`; a leading `/` is optional).
        key: String,
        /// Watch the whole subtree.
        #[arg(long)]
        recursive: bool,
        /// Keep watching instead of exiting after the first change.
        #[arg(long)]
        forever: bool,
        /// Changes after this index (as etcdctl: `waitIndex` is N + 1), from history, so a
        /// watch resumed with the last event's index does not see that event again.
        #[arg(long)]
        after_index: Option<u64>,
    },
}

pub async fn run(args: KvArgs) -> ExitCode {
    let client = match Client::new(args.endpoints.split(',')) {
        Ok(client) => client,
        Err(error) => {
            eprintln!("Error:  {error}");
            return ExitCode::from(EXIT_BAD_ARGS);
        }
    };
    match execute(&client, args.command).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("Error:  {error}");
            ExitCode::from(match error {
                Error::Etcd(_) => EXIT_SERVER_ERROR,
                Error::Unavailable { .. } => EXIT_BAD_CONNECTION,
                _ => EXIT_BAD_ARGS,
            })
        }
    }
}

async fn execute(client: &Client, command: KvCommand) -> Result<ExitCode, Error> {
    match command {
        KvCommand::Get { key, quorum } => {
            let response = client
                .kv_get(
                    &key,
                    GetOptions {
                        quorum,
                        ..GetOptions::default()
                    },
                )
                .await?;
            if response.node.dir {
                eprintln!(
                    "{}: is a directory",
                    response.node.key.as_deref().unwrap_or("/")
                );
                return Ok(ExitCode::from(EXIT_BAD_ARGS));
            }
            print_value(&response);
        }
        KvCommand::Set {
            key,
            value,
            ttl,
            swap_with_value,
            swap_with_index,
        } => {
            // As etcdctl (its Go client leaves out a zero TTL and prevIndex and an empty
            // prevValue): 0 is no TTL, not a key that expires at once; 0 and "" no condition.
            let options = SetOptions {
                ttl_s: ttl.filter(|ttl| *ttl != 0),
                prev_value: swap_with_value.filter(|value| !value.is_empty()),
                prev_index: swap_with_index.filter(|index| *index != 0),
                ..SetOptions::default()
            };
            print_value(&client.kv_set(&key, &value, options).await?);
        }
        KvCommand::Mk {
            key,
            value,
            ttl,
            in_order,
        } => {
            let ttl = ttl.filter(|ttl| *ttl != 0);
            let response = if in_order {
                client.kv_mk_in_order(&key, &value, ttl).await?
            } else {
                client.kv_mk(&key, &value, ttl).await?
            };
            print_value(&response);
        }
        KvCommand::Rm {
            key,
            dir,
            recursive,
            with_value,
            with_index,
        } => {
            let options = RmOptions {
                dir,
                recursive,
                // As etcdctl: an empty value and index 0 are no condition.
                prev_value: with_value.filter(|value| !value.is_empty()),
                prev_index: with_index.filter(|index| *index != 0),
            };
            let response = client.kv_rm(&key, options).await?;
            if !response.node.dir {
                print_value(&response);
            }
        }
        KvCommand::Ls {
            key,
            recursive,
            slash_dirs,
        } => {
            let response = client.kv_ls(&key, recursive).await?;
            if response.node.dir {
                print_children(&response.node, recursive, slash_dirs);
            } else {
                println!("{}", response.node.key.as_deref().unwrap_or("/"));
            }
        }
        KvCommand::Watch {
            key,
            recursive,
            forever,
            after_index,
        } => {
            // etcdctl: `--after-index 0` is no index at all.
            let mut wait_index = after_index.filter(|&n| n > 0).map(|n| n.saturating_add(1));
            loop {
                let event = client
                    .kv_watch(
                        &key,
                        WatchOptions {
                            recursive,
                            wait_index,
                        },
                    )
                    .await?;
                if recursive {
                    // etcdctl names the event's action and key first, then prints as usual.
                    println!(
                        "[{}] {}",
                        event.action,
                        event.node.key.as_deref().unwrap_or("/")
                    );
                }
                print_value(&event);
                if !forever {
                    break;
                }
                wait_index = Some(event.node.modified_index + 1);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// etcdctl's "simple" output: the node's value, or for a `delete` the previous value. As in
/// etcdctl, only `delete`: a `compareAndDelete` or an `expire` prints the node's value,
/// which is empty.
fn print_value(response: &KvResponse) {
    if response.action == "delete" {
        let previous = response
            .prev_node
            .as_ref()
            .and_then(|node| node.value.as_deref())
            .unwrap_or_default();
        println!("PrevNode.Value: {previous}");
    } else {
        println!("{}", response.node.value.as_deref().unwrap_or_default());
    }
}

fn print_children(dir: &Node, recursive: bool, slash_dirs: bool) {
    for child in &dir.nodes {
        let key = child.key.as_deref().unwrap_or_default();
        if child.dir && slash_dirs {
            println!("{key}/");
        } else {
            println!("{key}");
        }
        if recursive {
            print_children(child, recursive, slash_dirs);
        }
    }
}

/// `--ttl`: whole seconds, as etcdctl's (`5s` said only "invalid digit found in string").
fn parse_ttl(text: &str) -> Result<u64, String> {
    text.parse().map_err(|_| format!("give whole seconds, as etcdctl does (--ttl 5), not {text:?}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_ttl_with_a_unit_is_told_to_give_whole_seconds() {
        assert_eq!(super::parse_ttl("5"), Ok(5));
        assert!(super::parse_ttl("5s").is_err_and(|error| error.contains("whole seconds")));
    }
}
