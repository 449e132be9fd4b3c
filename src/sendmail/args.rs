//! The sendmail command line, parsed by hand the way getopt(3) reads Postfix's and Sendmail's:
//! grouped flags (`-ti`), option arguments attached or separate (`-fa@b`, `-f a@b`), options
//! after recipients, `--` to end options. Options that mean nothing to a relay are accepted and
//! ignored, so the option soup of cron, PHP and logwatch works; unknown letters are refused.
//! Pure: no I/O.

use std::ffi::OsString;
use std::path::PathBuf;

/// What the caller asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// `-bm` (the default): read one message from stdin and queue it.
    Deliver,
    /// `-bs`: an SMTP session on stdin/stdout.
    Smtp,
    /// Modes with nothing to do here (`-bi`/`-I` newaliases, `-q` queue run): exit 0.
    Nothing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub mode: Mode,
    /// `-t`: recipients from To/Cc/Bcc (or the Resent- ones), besides those on the command line.
    pub extract: bool,
    /// A line with only `.` ends the input; `-i`/`-oi` turn that off.
    pub dot_ends: bool,
    /// `-f`/`-r`: the envelope sender, as given (parsed later).
    pub sender: Option<String>,
    /// `-F`: the full name for a From header the message lacks.
    pub full_name: Option<String>,
    /// `-C`: the relay's configuration file.
    pub config: Option<PathBuf>,
    /// `-v`: log what happens to stderr.
    pub verbose: bool,
    pub recipients: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("unknown option -{0}")]
    Unknown(char),
    #[error("unsupported option {0}")]
    Unsupported(String),
    #[error("option -{0} needs a value")]
    MissingValue(char),
    #[error("argument {0:?} is not valid UTF-8")]
    NotUtf8(OsString),
}

/// Options whose value is ignored.
const IGNORED_WITH_VALUE: &str = "ABLNORVXehp";
/// Options with a value this command uses.
const WITH_VALUE: &str = "fFrCob";
/// Flags that are ignored.
const IGNORED_FLAGS: &str = "GUcmnx";

/// Parses the arguments after the program name (or after `graph-relay sendmail`).
pub fn parse(args: &[OsString]) -> Result<Invocation, ArgsError> {
    let mut inv = Invocation {
        mode: Mode::Deliver,
        extract: false,
        dot_ends: true,
        sender: None,
        full_name: None,
        config: None,
        verbose: false,
        recipients: Vec::new(),
    };
    let mut args = args.iter();
    let mut options_done = false;
    while let Some(arg) = args.next() {
        let arg = arg
            .to_str()
            .ok_or_else(|| ArgsError::NotUtf8(arg.clone()))?;
        if options_done || !arg.starts_with('-') || arg == "-" {
            inv.recipients.push(arg.to_string());
            continue;
        }
        if arg == "--" {
            options_done = true;
            continue;
        }
        if arg.starts_with("--") {
            return Err(ArgsError::Unsupported(arg.to_string()));
        }
        for (i, letter) in arg[1..].char_indices() {
            // The rest of this argument, or else the next one, is the value of a valued option.
            let attached = &arg[1 + i + letter.len_utf8()..];
            let mut value = || -> Result<String, ArgsError> {
                if !attached.is_empty() {
                    Ok(attached.to_string())
                } else {
                    let next = args.next().ok_or(ArgsError::MissingValue(letter))?;
                    next.to_str()
                        .map(str::to_string)
                        .ok_or_else(|| ArgsError::NotUtf8(next.clone()))
                }
            };
            match letter {
                't' => inv.extract = true,
                'i' => inv.dot_ends = false,
                'v' => inv.verbose = true,
                'I' => inv.mode = Mode::Nothing,
                // `-q`, `-q1h`, `-qR...`: a queue run; the relay delivers on its own.
                'q' => {
                    inv.mode = Mode::Nothing;
                    break;
                }
                'f' | 'r' => inv.sender = Some(value()?),
                'F' => inv.full_name = Some(value()?),
                'C' => inv.config = Some(PathBuf::from(value()?)),
                'o' => {
                    // `-oi` is the only one with a meaning here; `-odi`, `-oem`, `-oQ...` are not.
                    if value()? == "i" {
                        inv.dot_ends = false;
                    }
                }
                'b' => {
                    let mode = value()?;
                    inv.mode = match mode.as_str() {
                        "m" => Mode::Deliver,
                        "s" => Mode::Smtp,
                        "i" => Mode::Nothing,
                        _ => return Err(ArgsError::Unsupported(format!("-b{mode}"))),
                    };
                }
                c if IGNORED_WITH_VALUE.contains(c) => {
                    value()?;
                }
                c if IGNORED_FLAGS.contains(c) => {}
                c => return Err(ArgsError::Unknown(c)),
            }
            if WITH_VALUE.contains(letter) || IGNORED_WITH_VALUE.contains(letter) {
                // Its value was the rest of this argument (or the next one).
                break;
            }
        }
    }
    Ok(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(args: &[&str]) -> Result<Invocation, ArgsError> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        parse(&args)
    }

    #[test]
    fn php_default_and_cron_option_soup() {
        let php = parse_str(&["-t", "-i"]).unwrap();
        assert!(php.extract && !php.dot_ends);
        assert_eq!(php.mode, Mode::Deliver);
        // What cron (Debian's cronie/vixie) runs.
        let cron = parse_str(&[
            "-FCronDaemon",
            "-i",
            "-B8BITMIME",
            "-oem",
            "root@example.com",
        ])
        .unwrap();
        assert_eq!(cron.full_name.as_deref(), Some("CronDaemon"));
        assert_eq!(cron.recipients, ["root@example.com"]);
        assert!(!cron.dot_ends);
        let grouped = parse_str(&["-ti", "-odi", "-oQ/var/spool", "-v"]).unwrap();
        assert!(grouped.extract && !grouped.dot_ends && grouped.verbose);
        let oi = parse_str(&["-oi", "a@b.example"]).unwrap();
        assert!(!oi.dot_ends);
    }

    #[test]
    fn sender_and_name_attached_or_separate() {
        let a = parse_str(&["-fme@example.com", "-F", "Web Site", "x@example.com"]).unwrap();
        assert_eq!(a.sender.as_deref(), Some("me@example.com"));
        assert_eq!(a.full_name.as_deref(), Some("Web Site"));
        let b = parse_str(&["-f", "me@example.com", "x@example.com"]).unwrap();
        assert_eq!(b.sender.as_deref(), Some("me@example.com"));
        assert_eq!(b.recipients, ["x@example.com"]);
        let r = parse_str(&["-r", "bounce@example.com"]).unwrap();
        assert_eq!(r.sender.as_deref(), Some("bounce@example.com"));
        let it = parse_str(&["-itf", "me@example.com"]).unwrap();
        assert!(it.extract && !it.dot_ends);
        assert_eq!(it.sender.as_deref(), Some("me@example.com"));
    }

    #[test]
    fn modes_separator_and_options_after_recipients() {
        assert_eq!(parse_str(&["-bs"]).unwrap().mode, Mode::Smtp);
        assert_eq!(parse_str(&["-bm"]).unwrap().mode, Mode::Deliver);
        assert_eq!(parse_str(&["-bi"]).unwrap().mode, Mode::Nothing);
        assert_eq!(parse_str(&["-q"]).unwrap().mode, Mode::Nothing);
        assert_eq!(parse_str(&["-q1h"]).unwrap().mode, Mode::Nothing);
        let late = parse_str(&["a@b.example", "-f", "me@example.com"]).unwrap();
        assert_eq!(late.recipients, ["a@b.example"]);
        assert_eq!(late.sender.as_deref(), Some("me@example.com"));
        let sep = parse_str(&["-i", "--", "-odd@example.com"]).unwrap();
        assert_eq!(sep.recipients, ["-odd@example.com"]);
        let conf = parse_str(&["-C", "/etc/x.toml"]).unwrap();
        assert_eq!(conf.config, Some(PathBuf::from("/etc/x.toml")));
    }

    #[test]
    fn unknown_and_incomplete_options_are_refused() {
        assert_eq!(parse_str(&["-k"]), Err(ArgsError::Unknown('k')));
        assert_eq!(parse_str(&["-tk"]), Err(ArgsError::Unknown('k')));
        assert_eq!(parse_str(&["-f"]), Err(ArgsError::MissingValue('f')));
        assert!(matches!(
            parse_str(&["-bd"]),
            Err(ArgsError::Unsupported(s)) if s == "-bd"
        ));
        assert!(matches!(
            parse_str(&["--help"]),
            Err(ArgsError::Unsupported(_))
        ));
    }
}
