//! Completion for `kubectl externalsource <TAB>`: kubectl (1.26 and later) runs an executable
//! named `kubectl_complete-externalsource` with the words after the plugin's name, the one being
//! completed last, and reads candidates one a line followed by `:<directive>` (cobra's
//! `__complete` protocol). This binary answers that when called by that name (a link) or as
//! `kubectl-externalsource __complete ...`: subcommands, flags, namespaces, contexts and the
//! ExternalSources of the namespace the words name.

use externalsource_core::controller::api::ExternalSource;
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use crate::cli::Connection;

/// The name kubectl looks for.
pub const LINK_NAME: &str = "kubectl_complete-externalsource";

/// cobra's directives: file completion stays off unless a path is wanted.
const NO_FILE_COMPLETION: u8 = 4;
const DEFAULT: u8 = 0;

const SUBCOMMANDS: &[(&str, &str)] = &[
    ("get", "List ExternalSources with their Ready state and revision"),
    ("reconcile", "Reconcile now, wait, print the revision"),
    ("suspend", "Stop fetching"),
    ("resume", "Fetch again, wait, print the revision"),
    ("completion", "Print a shell completion script"),
];
const GLOBAL_FLAGS: &[&str] = &["--kubeconfig", "--context", "--namespace", "-n", "--help"];
const VALUE_FLAGS: &[&str] = &["--kubeconfig", "--context", "--namespace", "-n", "--timeout"];

/// The words before the one being completed, read as the command line they start.
#[derive(Debug, Default, PartialEq)]
struct Words {
    connection_kubeconfig: Option<String>,
    context: Option<String>,
    namespace: Option<String>,
    subcommand: Option<String>,
    positionals: usize,
    /// The flag whose value is being completed.
    pending_flag: Option<String>,
}

fn read(words: &[String]) -> Words {
    let mut out = Words::default();
    let mut it = words.iter().peekable();
    while let Some(word) = it.next() {
        let (flag, inline) = match word.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (word.as_str(), None),
        };
        if VALUE_FLAGS.contains(&flag) {
            let value = match inline {
                Some(v) => Some(v),
                None => match it.next() {
                    Some(v) => Some(v.clone()),
                    None => {
                        out.pending_flag = Some(flag.to_owned());
                        None
                    }
                },
            };
            match flag {
                "--kubeconfig" => out.connection_kubeconfig = value,
                "--context" => out.context = value,
                "-n" | "--namespace" => out.namespace = value,
                _ => {}
            }
        } else if word.starts_with('-') {
            // A switch (`-A`, `--help`): no value follows.
        } else if out.subcommand.is_none() {
            out.subcommand = Some(word.clone());
        } else {
            out.positionals += 1;
        }
    }
    out
}

/// Candidates for the last of `words` (the others come before it), and the directive.
pub async fn complete(words: &[String]) -> (Vec<String>, u8) {
    let (done, current) = match words.split_last() {
        Some((last, rest)) => (rest, last.as_str()),
        None => (&[][..], ""),
    };
    let w = read(done);
    let keep = |c: &str| c.starts_with(current);
    if let Some(flag) = &w.pending_flag {
        return match flag.as_str() {
            "--kubeconfig" => (Vec::new(), DEFAULT),
            "--context" => (contexts(&w).into_iter().filter(|c| keep(c)).collect(), NO_FILE_COMPLETION),
            "-n" | "--namespace" => {
                (namespaces(&w).await.into_iter().filter(|c| keep(c)).collect(), NO_FILE_COMPLETION)
            }
            _ => (Vec::new(), NO_FILE_COMPLETION),
        };
    }
    if current.starts_with('-') {
        let own: &[&str] = match w.subcommand.as_deref() {
            Some("get") => &["--all-namespaces", "-A"],
            Some("reconcile" | "resume") => &["--timeout"],
            _ => &[],
        };
        let flags = GLOBAL_FLAGS.iter().chain(own).filter(|f| keep(f)).map(|f| (*f).to_owned()).collect();
        return (flags, NO_FILE_COMPLETION);
    }
    let candidates = match (w.subcommand.as_deref(), w.positionals) {
        (None, _) => SUBCOMMANDS.iter().filter(|(c, _)| keep(c)).map(|(c, d)| format!("{c}\t{d}")).collect(),
        (Some("completion"), 0) => {
            ["bash", "zsh", "fish"].iter().filter(|c| keep(c)).map(|c| (*c).to_owned()).collect()
        }
        (Some("get" | "reconcile" | "suspend" | "resume"), 0) => {
            sources(&w).await.into_iter().filter(|c| keep(c)).collect()
        }
        _ => Vec::new(),
    };
    (candidates, NO_FILE_COMPLETION)
}

/// Prints the answer kubectl reads.
pub fn print(candidates: &[String], directive: u8) {
    for c in candidates {
        println!("{c}");
    }
    println!(":{directive}");
}

fn connection(w: &Words) -> Connection {
    Connection {
        kubeconfig: w.connection_kubeconfig.clone().map(Into::into),
        context: w.context.clone(),
        namespace: w.namespace.clone(),
    }
}

/// Names only: a completion that cannot reach the API server offers nothing rather than failing.
async fn sources(w: &Words) -> Vec<String> {
    let Ok((client, namespace)) = crate::client::connect(&connection(w)).await else { return Vec::new() };
    let api: Api<ExternalSource> = Api::namespaced(client, &namespace);
    api.list(&ListParams::default()).await.map(|l| l.items.iter().map(|es| es.name_any()).collect()).unwrap_or_default()
}

async fn namespaces(w: &Words) -> Vec<String> {
    let Ok((client, _)) = crate::client::connect(&connection(w)).await else { return Vec::new() };
    let api: Api<Namespace> = Api::all(client);
    api.list(&ListParams::default()).await.map(|l| l.items.iter().map(|n| n.name_any()).collect()).unwrap_or_default()
}

fn contexts(w: &Words) -> Vec<String> {
    let config = match &w.connection_kubeconfig {
        Some(path) => kube::config::Kubeconfig::read_from(path),
        None => kube::config::Kubeconfig::read(),
    };
    config.map(|c| c.contexts.into_iter().map(|c| c.name).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn reads_the_flags_and_the_subcommand_before_the_word() {
        let w = read(&words("--context=prod reconcile -n team-a --timeout 2m"));
        assert_eq!(w.context.as_deref(), Some("prod"));
        assert_eq!(w.namespace.as_deref(), Some("team-a"));
        assert_eq!(w.subcommand.as_deref(), Some("reconcile"));
        assert_eq!((w.positionals, w.pending_flag), (0, None));
        let w = read(&words("get prices -n"));
        assert_eq!((w.positionals, w.pending_flag.as_deref()), (1, Some("-n")));
    }

    #[tokio::test]
    async fn subcommands_flags_and_shells_without_a_cluster() {
        let (c, d) = complete(&words("re")).await;
        assert_eq!(c.iter().map(|c| c.split('\t').next().unwrap()).collect::<Vec<_>>(), ["reconcile", "resume"]);
        assert_eq!(d, NO_FILE_COMPLETION);
        let (c, _) = complete(&words("get --all")).await;
        assert_eq!(c, ["--all-namespaces"]);
        let (c, _) = complete(&words("reconcile x --ti")).await;
        assert_eq!(c, ["--timeout"]);
        let (c, _) = complete(&words("completion ")).await;
        assert_eq!(c, ["bash", "zsh", "fish"]);
        let (c, d) = complete(&words("get --kubeconfig ")).await;
        assert!(c.is_empty() && d == DEFAULT, "a path: the shell completes files");
    }
}
