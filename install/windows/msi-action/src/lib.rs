//! The MSI's custom action DLL, `flex_msi_action.dll` (in the MSI's Binary
//! table, never installed).
//!
//! Windows Installer keeps nothing of what a program run as a custom action
//! prints: a failed `flex-agent.exe configure` would leave only "returned
//! actual error code 78" in the `/l*v` log, and IT would not learn that the
//! token file cannot be read. [`RunAndLog`] runs the program named in its
//! CustomActionData, copies each line it printed into the installer's log, and
//! when the program fails, reports its last line as the install's error and
//! fails the install (msiexec exits 1603).
//!
//! CustomActionData: the program's path, then one argument per line (MSI
//! properties given on a command line cannot hold a line break).

/// The program and its arguments, from CustomActionData.
pub fn parse_data(data: &str) -> Option<(String, Vec<String>)> {
    let mut lines = data.split('\n').map(|l| l.trim_end_matches('\r'));
    let program = lines.next()?.trim();
    if program.is_empty() {
        return None;
    }
    Some((program.to_string(), lines.map(str::to_string).collect()))
}

/// What the installer's log gets from one run: every line printed (stdout,
/// then stderr), and for a failure the message to report as the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub lines: Vec<String>,
    pub error: Option<String>,
}

/// The log lines and the error of a run that printed `stdout` and `stderr` and
/// ended with exit code `code` (`None`: killed, or it did not start).
pub fn outcome(program: &str, stdout: &[u8], stderr: &[u8], code: Option<i32>) -> Outcome {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let (out, err) = (text(stdout), text(stderr));
    let lines: Vec<String> = out
        .lines()
        .chain(err.lines())
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let error = match code {
        Some(0) => None,
        _ => {
            let why = err
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(str::to_string);
            let status = code.map_or("no exit code".to_string(), |c| format!("exit code {c}"));
            Some(match why {
                Some(why) => format!("{why} ({program}: {status})"),
                None => format!("{program} failed ({status}) and printed no reason"),
            })
        }
    };
    Outcome { lines, error }
}

#[cfg(windows)]
mod msi {
    use windows_sys::Win32::Foundation::{ERROR_INSTALL_FAILURE, ERROR_MORE_DATA, ERROR_SUCCESS};
    use windows_sys::Win32::System::ApplicationInstallationAndServicing::{
        MsiCloseHandle, MsiCreateRecord, MsiGetPropertyW, MsiProcessMessage, MsiRecordSetStringW,
        INSTALLMESSAGE, INSTALLMESSAGE_ERROR, INSTALLMESSAGE_INFO, MSIHANDLE,
    };

    fn wide(s: &str) -> Vec<u16> {
        s.encode_utf16().chain(Some(0)).collect()
    }

    /// A property of the running install (CustomActionData in a deferred action).
    fn property(install: MSIHANDLE, name: &str) -> Option<String> {
        let name = wide(name);
        let mut buf = vec![0u16; 1024];
        loop {
            let mut len = buf.len() as u32;
            // SAFETY: a NUL-terminated name and a buffer with its length in units.
            let rc = unsafe { MsiGetPropertyW(install, name.as_ptr(), buf.as_mut_ptr(), &mut len) };
            match rc {
                ERROR_SUCCESS => return Some(String::from_utf16_lossy(&buf[..len as usize])),
                // `len` is the length without the NUL.
                ERROR_MORE_DATA if (len as usize) < 1 << 20 => buf = vec![0u16; len as usize + 1],
                _ => return None,
            }
        }
    }

    /// One message to the installer: `text` as is (the template `[1]` keeps
    /// brackets in it from being read as properties).
    fn message(install: MSIHANDLE, kind: INSTALLMESSAGE, text: &str) {
        // SAFETY: plain calls on a record handle we own and close.
        unsafe {
            let record = MsiCreateRecord(1);
            if record == 0 {
                return;
            }
            let (template, text) = (wide("[1]"), wide(text));
            MsiRecordSetStringW(record, 0, template.as_ptr());
            MsiRecordSetStringW(record, 1, text.as_ptr());
            MsiProcessMessage(install, kind, record);
            MsiCloseHandle(record);
        }
    }

    pub fn run(install: MSIHANDLE) -> u32 {
        let data = property(install, "CustomActionData").unwrap_or_default();
        let Some((program, args)) = super::parse_data(&data) else {
            message(
                install,
                INSTALLMESSAGE_ERROR,
                "flex_msi_action: no program in CustomActionData (a broken MSI)",
            );
            return ERROR_INSTALL_FAILURE;
        };
        let outcome = match std::process::Command::new(&program).args(&args).output() {
            Ok(out) => super::outcome(&program, &out.stdout, &out.stderr, out.status.code()),
            Err(e) => super::Outcome {
                lines: Vec::new(),
                error: Some(format!("cannot run {program}: {e}")),
            },
        };
        for line in &outcome.lines {
            message(install, INSTALLMESSAGE_INFO, line);
        }
        match outcome.error {
            None => ERROR_SUCCESS,
            Some(e) => {
                message(install, INSTALLMESSAGE_ERROR, &e);
                ERROR_INSTALL_FAILURE
            }
        }
    }
}

/// The custom action: runs the program in CustomActionData (see the module
/// docs) with the handle Windows Installer passes. A panic fails the install
/// rather than unwinding into msi.dll.
#[cfg(windows)]
#[no_mangle]
pub extern "system" fn RunAndLog(install: u32) -> u32 {
    std::panic::catch_unwind(|| msi::run(install))
        .unwrap_or(windows_sys::Win32::Foundation::ERROR_INSTALL_FAILURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_the_program_then_one_argument_per_line() {
        let (program, args) = parse_data(
            "C:\\Program Files\\Flex\\flex-agent.exe\nconfigure\n--server-url=\n--email-template={user}@corp.example",
        )
        .unwrap();
        assert_eq!(program, r"C:\Program Files\Flex\flex-agent.exe");
        assert_eq!(
            args,
            [
                "configure",
                "--server-url=",
                "--email-template={user}@corp.example"
            ]
        );
        assert_eq!(parse_data(""), None);
        assert_eq!(parse_data("  \nconfigure"), None);
    }

    #[test]
    fn a_failure_reports_the_last_line_of_stderr() {
        let o = outcome(
            "flex-agent.exe",
            b"checking the install values\n",
            b"warning: something\nflex-agent: SERVER_URL 'flex.corp' has no scheme\n\n",
            Some(78),
        );
        assert_eq!(
            o.lines,
            [
                "checking the install values",
                "warning: something",
                "flex-agent: SERVER_URL 'flex.corp' has no scheme"
            ]
        );
        assert_eq!(
            o.error.as_deref(),
            Some("flex-agent: SERVER_URL 'flex.corp' has no scheme (flex-agent.exe: exit code 78)")
        );
        let ok = outcome("flex-agent.exe", b"done\n", b"", Some(0));
        assert_eq!(ok.error, None);
        let silent = outcome("flex-agent.exe", b"", b"", None);
        assert!(
            silent.error.unwrap().contains("printed no reason"),
            "a failure without output still fails"
        );
    }
}
