//! `portcullis completions SHELL` and `portcullis man`: generated from the
//! CLI definition itself, so they cannot fall behind it.

use std::path::PathBuf;

use clap::CommandFactory;

use crate::Cli;

#[derive(clap::Args)]
pub(crate) struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
}

#[derive(clap::Args)]
pub(crate) struct ManArgs {
    /// Write portcullis.1 and one page per subcommand
    /// (portcullis-token.1, …) into this folder instead of printing
    /// portcullis.1.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Print the completion script: `source <(portcullis completions bash)`.
pub(crate) fn completions(a: &CompletionsArgs) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    // Into a buffer first: `generate` panics on a write error, and a
    // reader that stops early (`| head`) is not one.
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "portcullis", &mut script);
    print(&script)
}

/// Write `bytes` to stdout; a closed pipe is the reader's choice.
fn print(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// Print the man page (roff), or write every page into `--out`.
pub(crate) fn man(a: &ManArgs) -> anyhow::Result<()> {
    let cmd = Cli::command();
    match &a.out {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut page)?;
            print(&page)?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            clap_mangen::generate_to(cmd, dir)?;
            eprintln!("wrote the man pages to {}", dir.display());
        }
    }
    Ok(())
}
