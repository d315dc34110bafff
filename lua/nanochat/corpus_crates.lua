-- lua/nanochat/corpus_crates.lua — pinned crate lists for nc.corpus.
--
-- Names are Debian-style crate names (lower case, '_' written '-'), i.e. the package
-- librust-<name>-dev; every name here was checked to exist in Debian 12 bookworm
-- (`apt-cache pkgnames librust-`). Versions are whatever bookworm ships; the manifest of a
-- built corpus records them.
--   small   — the built-in default that recipes use on first run (corpus.default_dir()):
--             18 small popular crates, ~4-5 MB of Rust after filtering.
--   default — the curated list of popular crates (`nanochat tools/corpus.lua crates=default`),
--             top-level crates only (deps=true pulls their librust dependencies as well);
--             libc is left out on purpose (3.4 MB of FFI declarations).
local M = {}

M.small = {
    'anyhow', 'bytes', 'either', 'hashbrown', 'indexmap', 'itertools', 'log', 'memchr', 'nom',
    'once-cell', 'rand', 'rand-core', 'regex', 'regex-syntax', 'serde', 'serde-json', 'smallvec',
    'thiserror',
}

M.default = {
    'anyhow', 'thiserror', 'serde', 'serde-json', 'serde-derive', 'serde-yaml', 'toml',
    'tokio', 'tokio-util', 'tokio-stream', 'futures', 'futures-util', 'futures-core',
    'futures-channel', 'futures-executor', 'async-trait', 'async-stream', 'clap',
    'clap-derive', 'clap-lex', 'structopt', 'rand', 'rand-core', 'rand-chacha',
    'rand-xorshift', 'rand-pcg', 'itertools', 'either', 'nom', 'regex', 'regex-syntax',
    'aho-corasick', 'memchr', 'bstr', 'syn', 'quote', 'proc-macro2', 'rayon', 'rayon-core',
    'crossbeam', 'crossbeam-channel', 'crossbeam-deque', 'crossbeam-epoch', 'crossbeam-utils',
    'crossbeam-queue', 'parking-lot', 'parking-lot-core', 'lock-api', 'once-cell',
    'lazy-static', 'hyper', 'http', 'http-body', 'httparse', 'h2', 'reqwest', 'url',
    'percent-encoding', 'form-urlencoded', 'idna', 'chrono', 'time', 'humantime', 'csv',
    'csv-core', 'walkdir', 'globset', 'ignore', 'glob', 'tempfile', 'tracing', 'tracing-core',
    'tracing-subscriber', 'tracing-attributes', 'log', 'env-logger', 'simplelog', 'fern',
    'proptest', 'quickcheck', 'criterion', 'rusqlite', 'git2', 'bytes', 'smallvec', 'arrayvec',
    'tinyvec', 'hashbrown', 'indexmap', 'ahash', 'fnv', 'siphasher', 'bitflags', 'num',
    'num-traits', 'num-integer', 'num-bigint', 'num-rational', 'num-complex', 'num-cpus',
    'num-derive', 'half', 'ordered-float', 'base64', 'hex', 'sha2', 'sha1', 'md5', 'digest',
    'blake3', 'crc32fast', 'adler', 'flate2', 'miniz-oxide', 'zip', 'tar', 'bzip2', 'xz2',
    'snap', 'byteorder', 'memmap2', 'nix', 'signal-hook', 'ctrlc', 'dirs',
    'directories', 'which', 'home', 'atty', 'termcolor', 'colored', 'ansi-term', 'console',
    'indicatif', 'dialoguer', 'crossterm', 'termion', 'textwrap', 'unicode-width',
    'unicode-segmentation', 'unicode-normalization', 'unicode-xid', 'unicode-ident', 'semver',
    'petgraph', 'slab', 'bumpalo', 'typed-arena', 'uuid', 'derive-more', 'strum',
    'strum-macros', 'enum-map', 'bincode', 'rmp-serde', 'serde-cbor', 'quick-xml', 'xml-rs',
    'roxmltree', 'pulldown-cmark', 'tera', 'pest', 'pest-derive', 'lalrpop', 'lalrpop-util',
    'combine', 'codespan-reporting', 'similar', 'diff', 'difference', 'pretty-assertions',
    'insta', 'tokio-test', 'mio', 'socket2', 'async-std', 'smol', 'async-channel', 'async-io',
    'async-executor', 'event-listener', 'futures-lite', 'pin-project', 'pin-project-lite',
    'static-assertions', 'cfg-if', 'scopeguard', 'paste', 'memoffset', 'thread-local',
    'rustc-hash', 'dashmap', 'lru', 'serde-bytes', 'toml-edit', 'ron', 'config', 'dotenv',
    'tower', 'tower-service', 'openssl', 'rustls', 'webpki', 'ring', 'hmac', 'pbkdf2', 'aes',
    'image', 'png', 'gif', 'jpeg-decoder', 'tiff', 'rgb', 'euclid', 'rand-distr', 'libm',
    'approx', 'float-cmp', 'fixedbitset', 'bit-set', 'bit-vec', 'beef', 'tree-sitter',
    'syntect', 'pad', 'tabwriter', 'prettytable-rs', 'tui', 'notify', 'inotify', 'sysinfo',
    'procfs', 'users', 'hostname', 'gethostname', 'chrono-tz', 'time-macros', 'nom-locate',
    'rustyline', 'clap-complete', 'shlex', 'shell-words', 'wildmatch', 'fs-extra', 'filetime',
    'same-file', 'pathdiff', 'camino', 'dunce', 'normpath', 'opener', 'open', 'zeroize',
    'subtle', 'generic-array', 'typenum', 'hex-literal', 'pem', 'rustls-pemfile',
    'jsonwebtoken', 'oauth2', 'mime', 'mime-guess', 'encoding-rs', 'content-inspector',
    'serde-urlencoded', 'cookie', 'tokio-rustls', 'hyper-rustls', 'native-tls',
    'tokio-native-tls', 'trust-dns-resolver', 'ipnet',
    -- systems / tooling
    'rustix', 'object', 'gimli', 'addr2line', 'backtrace', 'cc', 'bindgen', 'regex-automata',
    'sharded-slab', 'arc-swap', 'encoding', 'darling', 'derive-builder', 'erased-serde', 'goblin', 'rustc-demangle',
    'cpp-demangle', 'fancy-regex', 'grep-searcher', 'plotters', 'unicase', 'synstructure', 'tracing-log', 'valuable',
}

return M
