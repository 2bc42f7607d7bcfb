//! The service name of a process when the user gave none, as an OpenTelemetry SDK in it would
//! have: its own `OTEL_SERVICE_NAME` first; else, for an interpreter (Python, Node), the program
//! it runs (the script, the `-m` module, or the app a server launcher such as uvicorn or
//! gunicorn is given), since every such process is called `python3` or `node`; else its `comm`.
//! Pure: the caller reads /proc/PID/environ and /proc/PID/cmdline.

/// Launchers whose program is the app they are given (`main:app`, `shop.wsgi:application`).
const LAUNCHERS: &[&str] = &[
    "uvicorn",
    "gunicorn",
    "hypercorn",
    "daphne",
    "granian",
    "waitress-serve",
];

/// The service name of a process with environment `environ` and command line `cmdline` (both
/// NUL-separated, as /proc gives them) and kernel name `comm`.
pub fn service_name(environ: &[u8], cmdline: &[u8], comm: &str) -> String {
    let from_env = environ
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(b"OTEL_SERVICE_NAME="))
        .map(|name| String::from_utf8_lossy(name).trim().to_owned())
        .filter(|name| !name.is_empty());
    if let Some(name) = from_env {
        return name;
    }
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    program(&args).unwrap_or_else(|| comm.to_owned())
}

fn base(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The program an interpreter's command line runs, when it is one.
fn program(args: &[String]) -> Option<String> {
    let interpreter = base(args.first()?);
    let rest = &args[1..];
    if interpreter.starts_with("python") {
        python_program(rest)
    } else if interpreter == "node" || interpreter.starts_with("nodejs") {
        let script = rest.iter().find(|arg| !arg.starts_with('-'))?;
        Some(script_name(script, &[".js", ".mjs", ".cjs", ".ts"]))
    } else if LAUNCHERS.contains(&interpreter) {
        launched_app(rest)
    } else {
        None
    }
}

fn python_program(args: &[String]) -> Option<String> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-m" => {
                let module = args.next()?;
                return if LAUNCHERS.contains(&module.as_str()) {
                    launched_app(args.as_slice()).or_else(|| Some(module.clone()))
                } else {
                    Some(module.clone())
                };
            }
            // Code on the command line: no program name to go by.
            "-c" => return None,
            // Flags that take a value.
            "-W" | "-X" | "-Q" => {
                args.next();
            }
            flag if flag.starts_with('-') => {}
            script => {
                let name = base(script);
                let name = name.strip_suffix(".py").unwrap_or(name);
                return if LAUNCHERS.contains(&name) {
                    launched_app(args.as_slice()).or_else(|| Some(name.to_owned()))
                } else {
                    Some(script_name(script, &[".py"]))
                };
            }
        }
    }
    None
}

/// The app a launcher is given: `main:app` is `main`, `shop.wsgi:application` is `shop.wsgi`
/// (a flag's value such as `0.0.0.0:8000` is no module path).
fn launched_app(args: &[String]) -> Option<String> {
    args.iter()
        .filter(|arg| !arg.starts_with('-'))
        .filter_map(|arg| arg.split_once(':').map(|(module, _)| module))
        .find(|module| is_module_path(module))
        .map(str::to_owned)
}

/// `orders.api`: dotted identifiers.
fn is_module_path(text: &str) -> bool {
    !text.is_empty()
        && text.split('.').all(|part| {
            part.chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_alphanumeric() || c == '_')
        })
}

/// A script's name without its extension; an `index`, `main` or `__main__` file goes by its
/// directory's name.
fn script_name(script: &str, extensions: &[&str]) -> String {
    let name = base(script);
    let stem = extensions
        .iter()
        .find_map(|ext| name.strip_suffix(ext))
        .unwrap_or(name);
    if matches!(stem, "index" | "main" | "__main__") {
        let parent = script
            .rsplit('/')
            .nth(1)
            .filter(|dir| !dir.is_empty() && *dir != ".");
        if let Some(dir) = parent {
            return dir.to_owned();
        }
    }
    stem.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nul(args: &[&str]) -> Vec<u8> {
        args.iter().flat_map(|a| a.bytes().chain([0])).collect()
    }

    #[test]
    fn the_processs_own_otel_service_name_comes_first() {
        let environ = nul(&["PATH=/bin", "OTEL_SERVICE_NAME=checkout", "HOME=/"]);
        let cmdline = nul(&["python3", "app.py"]);
        assert_eq!(service_name(&environ, &cmdline, "python3"), "checkout");
        let empty = nul(&["OTEL_SERVICE_NAME="]);
        assert_eq!(service_name(&empty, &cmdline, "python3"), "app");
    }

    #[test]
    fn interpreters_go_by_the_program_they_run() {
        let cases: &[(&[&str], &str, &str)] = &[
            (
                &[
                    "/usr/bin/python3.11",
                    "tests/apps/py_burn.py",
                    "--port",
                    "0",
                ],
                "python3.11",
                "py_burn",
            ),
            (
                &["python3", "-u", "-X", "dev", "/srv/orders/server.py"],
                "python3",
                "server",
            ),
            (&["python3", "-m", "orders.api"], "python3", "orders.api"),
            (
                &["python3", "-m", "uvicorn", "main:app", "--port", "8000"],
                "python3",
                "main",
            ),
            (
                &[
                    "/venv/bin/python3",
                    "/venv/bin/uvicorn",
                    "--workers",
                    "2",
                    "shop.asgi:app",
                ],
                "uvicorn",
                "shop.asgi",
            ),
            (
                &[
                    "/venv/bin/python3",
                    "/venv/bin/gunicorn",
                    "-w",
                    "4",
                    "loans.wsgi:application",
                ],
                "gunicorn",
                "loans.wsgi",
            ),
            (
                &["gunicorn", "-b", "0.0.0.0:8000", "app:server"],
                "gunicorn",
                "app",
            ),
            (
                &["python3", "/srv/billing/__main__.py"],
                "python3",
                "billing",
            ),
            (
                &["node", "--enable-source-maps", "shop.js", "--port", "0"],
                "node",
                "shop",
            ),
            (&["node", "/app/payments/index.js"], "node", "payments"),
            (&["python3", "-c", "print(1)"], "python3", "python3"),
            (&["/usr/sbin/nginx", "-g", "daemon off;"], "nginx", "nginx"),
            (&[], "demo-app", "demo-app"),
        ];
        for (args, comm, expected) in cases {
            assert_eq!(service_name(b"", &nul(args), comm), *expected, "{args:?}");
        }
    }
}
