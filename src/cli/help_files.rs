//! Shell completions and man pages, generated from the same clap definitions as `--help`, so
//! they cannot drift from it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

/// Print a shell completion script to stdout.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  adsproc completions bash > ~/.local/share/bash-completion/completions/adsproc\n  adsproc completions zsh > ~/.zfunc/_adsproc\n  adsproc completions fish > ~/.config/fish/completions/adsproc.fish")]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// Write man pages: adsproc(1) and one per subcommand (adsproc-backfill(1), ...).
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  adsproc man --out ./man && man ./man/adsproc-backfill.1\n  adsproc man | man -l -")]
pub struct ManArgs {
    /// Directory to write every page into; without it, adsproc(1) goes to stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn completions(a: CompletionsArgs, mut cmd: clap::Command) -> anyhow::Result<ExitCode> {
    clap_complete::generate(a.shell, &mut cmd, "adsproc", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

pub fn man(a: ManArgs, cmd: clap::Command) -> anyhow::Result<ExitCode> {
    let Some(dir) = a.out else {
        clap_mangen::Man::new(cmd).render(&mut std::io::stdout()).context("cannot write the man page")?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("--out {}: cannot create it", dir.display()))?;
    let mut pages = vec![("adsproc".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        let name = format!("adsproc-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, page) in &pages {
        let path = dir.join(format!("{name}.1"));
        let mut file = std::fs::File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
        clap_mangen::Man::new(page.clone()).render(&mut file).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("wrote {} man pages to {}", pages.len(), dir.display());
    Ok(ExitCode::SUCCESS)
}
