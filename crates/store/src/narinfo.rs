//! narinfo files: what a binary cache says about one store path.
//!
//! `Key: value` lines, one per field (`Sig` may repeat). Parsing is
//! stricter than Nix's, which lets most repeated keys override earlier
//! ones: a repeated key is ambiguous (a reader keeping the first and one
//! keeping the last would disagree about the same file), so it is refused.
//! Everything Nix writes is accepted, and keys we do not know (`System`,
//! newer additions) are ignored, as Nix does. Rendering writes Nix's key
//! order, so a narinfo Nix wrote renders back byte for byte.
use std::fmt::{self, Write};

use crate::{
    ca::{CaError, ContentAddress},
    hash::{HashError, NixHash},
    signing::{self, Signature, SigningError},
    store_path::{StorePath, StorePathError},
};

/// The fields of a narinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    pub store_path: StorePath,
    /// Where the (compressed) NAR is, relative to the cache root.
    pub url: String,
    /// `none`, `xz`, `zstd`, `bzip2`, …; a missing key means `bzip2`.
    pub compression: String,
    /// Hash and size of the file at `url`.
    pub file_hash: Option<NixHash>,
    pub file_size: Option<u64>,
    /// Nix writes only sha256, but reads any algorithm.
    pub nar_hash: NixHash,
    pub nar_size: u64,
    /// In file order, each once.
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
    /// In file order, each once.
    pub signatures: Vec<Signature>,
    pub ca: Option<ContentAddress>,
}

/// Why a narinfo text was refused. Lines count from 1.
#[derive(Debug, thiserror::Error)]
pub enum NarInfoError {
    #[error("narinfo line {line}: expected `Key: value`")]
    Syntax { line: usize },
    #[error("narinfo line {line}: {key} appears again (only Sig may repeat)")]
    Duplicate { line: usize, key: &'static str },
    #[error("narinfo: no {0}")]
    Missing(&'static str),
    #[error("narinfo line {line}: {key}: {reason}")]
    Invalid { line: usize, key: &'static str, reason: FieldError },
}

/// Why a narinfo value was refused.
#[derive(Debug, thiserror::Error)]
pub enum FieldError {
    #[error(transparent)]
    StorePath(#[from] StorePathError),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(transparent)]
    Signature(#[from] SigningError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("{0:?} is not a decimal number")]
    Number(String),
    #[error("must not be empty")]
    Empty,
    #[error("must not be zero")]
    Zero,
}

/// The keys that may appear once, in the order Nix writes them (`Sig`
/// lines go between `Deriver` and `CA`).
const SINGLE_KEYS: [&str; 10] =
    ["StorePath", "URL", "Compression", "FileHash", "FileSize", "NarHash", "NarSize", "References", "Deriver", "CA"];

impl NarInfo {
    /// Parses narinfo text whose store path must lie in `store_dir`.
    pub fn parse(text: &str, store_dir: &str) -> Result<Self, NarInfoError> {
        let mut fields = Fields::default();
        let mut seen: Vec<&str> = Vec::new();
        for (i, line) in text.split_terminator('\n').enumerate() {
            let line_no = i + 1;
            let (key, value) = line
                .split_once(": ")
                .or_else(|| Some((line.strip_suffix(':')?, "")))
                .filter(|(key, _)| !key.is_empty())
                .ok_or(NarInfoError::Syntax { line: line_no })?;
            let key: &'static str = match SINGLE_KEYS.iter().find(|k| **k == key) {
                Some(k) if seen.contains(k) => return Err(NarInfoError::Duplicate { line: line_no, key: k }),
                Some(k) => {
                    seen.push(*k);
                    k
                }
                None if key == "Sig" => "Sig",
                None => continue,
            };
            fields.set(key, value, store_dir).map_err(|reason| NarInfoError::Invalid { line: line_no, key, reason })?;
        }
        Ok(Self {
            store_path: fields.store_path.ok_or(NarInfoError::Missing("StorePath"))?,
            url: fields.url.ok_or(NarInfoError::Missing("URL"))?,
            compression: fields.compression.filter(|c| !c.is_empty()).unwrap_or_else(|| "bzip2".into()),
            file_hash: fields.file_hash,
            file_size: fields.file_size,
            nar_hash: fields.nar_hash.ok_or(NarInfoError::Missing("NarHash"))?,
            nar_size: fields.nar_size.ok_or(NarInfoError::Missing("NarSize"))?,
            references: fields.references,
            deriver: fields.deriver,
            signatures: fields.signatures,
            ca: fields.ca,
        })
    }

    /// The narinfo text, keys in Nix's order, hashes as `<algo>:<nix32>`.
    /// `References` is always written, even empty, as Nix does.
    pub fn render(&self, store_dir: &str) -> String {
        let mut s = String::new();
        self.write(&mut s, store_dir).expect("writing to a String cannot fail");
        s
    }

    fn write(&self, w: &mut String, store_dir: &str) -> fmt::Result {
        writeln!(w, "StorePath: {}", self.store_path.to_absolute(store_dir))?;
        writeln!(w, "URL: {}", self.url)?;
        writeln!(w, "Compression: {}", self.compression)?;
        if let Some(h) = &self.file_hash {
            writeln!(w, "FileHash: {h}")?;
        }
        if let Some(n) = self.file_size {
            writeln!(w, "FileSize: {n}")?;
        }
        writeln!(w, "NarHash: {}", self.nar_hash)?;
        writeln!(w, "NarSize: {}", self.nar_size)?;
        let refs: Vec<String> = self.references.iter().map(StorePath::to_string).collect();
        writeln!(w, "References: {}", refs.join(" "))?;
        if let Some(d) = &self.deriver {
            writeln!(w, "Deriver: {d}")?;
        }
        for sig in &self.signatures {
            writeln!(w, "Sig: {sig}")?;
        }
        if let Some(ca) = &self.ca {
            writeln!(w, "CA: {ca}")?;
        }
        Ok(())
    }

    /// What the `Sig`s sign ([`signing::fingerprint`]); `None` when the NAR
    /// hash is not sha256, which no signer produces.
    pub fn fingerprint(&self, store_dir: &str) -> Option<String> {
        let nar_sha256 = self.nar_hash.as_sha256()?;
        Some(signing::fingerprint(store_dir, &self.store_path, &nar_sha256, self.nar_size, &self.references))
    }
}

/// The fields seen so far.
#[derive(Default)]
struct Fields {
    store_path: Option<StorePath>,
    url: Option<String>,
    compression: Option<String>,
    file_hash: Option<NixHash>,
    file_size: Option<u64>,
    nar_hash: Option<NixHash>,
    nar_size: Option<u64>,
    references: Vec<StorePath>,
    deriver: Option<StorePath>,
    signatures: Vec<Signature>,
    ca: Option<ContentAddress>,
}

impl Fields {
    /// Reads the value of a known key.
    fn set(&mut self, key: &str, value: &str, store_dir: &str) -> Result<(), FieldError> {
        match key {
            "StorePath" => self.store_path = Some(StorePath::from_absolute(value, store_dir)?),
            "URL" if value.is_empty() => return Err(FieldError::Empty),
            "URL" => self.url = Some(value.to_owned()),
            "Compression" => self.compression = Some(value.to_owned()),
            "FileHash" => self.file_hash = Some(NixHash::parse(value)?),
            "FileSize" => self.file_size = Some(number(value)?),
            "NarHash" => self.nar_hash = Some(NixHash::parse(value)?),
            "NarSize" => match number(value)? {
                0 => return Err(FieldError::Zero),
                n => self.nar_size = Some(n),
            },
            "References" => {
                for r in value.split(' ').filter(|r| !r.is_empty()) {
                    push_new(&mut self.references, StorePath::from_basename(r)?);
                }
            }
            // `nix-store --query --deriver` prints this for "none", and some
            // narinfo writers pass it on; Nix reads it as none.
            "Deriver" if value == "unknown-deriver" => {}
            "Deriver" => self.deriver = Some(StorePath::from_basename(value)?),
            "Sig" => push_new(&mut self.signatures, value.parse()?),
            // Nix reads an empty CA as none.
            "CA" if value.is_empty() => {}
            "CA" => self.ca = Some(value.parse()?),
            _ => unreachable!("only known keys are set"),
        }
        Ok(())
    }
}

/// A decimal u64 (Rust's parser would also take a leading `+`).
fn number(s: &str) -> Result<u64, FieldError> {
    match s.parse() {
        Ok(n) if !s.starts_with('+') => Ok(n),
        _ => Err(FieldError::Number(s.to_owned())),
    }
}

/// Appends `x` unless present (Nix keeps references and signatures as sets).
fn push_new<T: PartialEq>(v: &mut Vec<T>, x: T) {
    if !v.contains(&x) {
        v.push(x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ca::IngestionMethod, hash::HashAlgo, signing::VerifyingKey};

    // Written by `nix copy --to file://…` (nix 2.8): a `builtins.toFile` path
    // with three references, signed by the key below; a built path with a
    // deriver, copied with compression=none; a `nix-store --add` path.
    const SIGNED: &str = "\
StorePath: /nix/store/y0dk771g0p06fg380a3lrh4vnfra8d55-multi
URL: nar/1d8xkzfz5i00pgbl44wnf5clfsdchvf6l2isxkwd14gb9y9lyn8w.nar.xz
Compression: xz
FileHash: sha256:1d8xkzfz5i00pgbl44wnf5clfsdchvf6l2isxkwd14gb9y9lyn8w
FileSize: 232
NarHash: sha256:11qmwlr24fzk7ld2b04dk0nl2ilphi49k16a145gcx5kb0m86aj1
NarSize: 256
References: n3v3lqccv8x9r6csff1x3q3ylvf19py8-b qkdh8krdkwsg7lwq5bwwfcv7h9x142y4-a w4jbr2ld1fgmlbfcjc4zy4za39772a2a-c
Sig: test-1:wLfRvHfXvaFWUk3t9oqBlaVbktxfaa8Hf/Th19GLe+YjFU6YbxV+N0YIMr1O+l3ti+78Bl8/RPWWn1YfoQLuCg==
CA: text:sha256:08wr5n9kpx2xl8w4i0ip8lp4k30mq5syv7f5drhwafwr6zlf0ry2
";
    const PK: &str = "test-1:IOrZLdx6LymWNFqCDMAOxUyZFlY+cDPZ4twYzgmGnZQ=";
    const BUILT: &str = "\
StorePath: /nix/store/s8fgmxxmwgdq68csz67bgc9zjzpr81zq-sf-test
URL: nar/17n5csq6r0i4wcm401wyb5cfpkgx7v2yjjilal3ky2j8ipg6230p.nar
Compression: none
FileHash: sha256:17n5csq6r0i4wcm401wyb5cfpkgx7v2yjjilal3ky2j8ipg6230p
FileSize: 168
NarHash: sha256:17n5csq6r0i4wcm401wyb5cfpkgx7v2yjjilal3ky2j8ipg6230p
NarSize: 168
References: s5jxvw5aj6iw28zxqd6ccqvqxcdq2cha-tf.txt
Deriver: 6yc50x3lgmk4khmfip38h2zwig0w4di4-sf-test.drv
";
    const FIXED: &str = "\
StorePath: /nix/store/n3v3lqccv8x9r6csff1x3q3ylvf19py8-b
URL: nar/0c2q9nr06k3ynh3abzq4ffn3qray8appd45jwm8pbj8pih2xr6rj.nar.xz
Compression: xz
FileHash: sha256:0c2q9nr06k3ynh3abzq4ffn3qray8appd45jwm8pbj8pih2xr6rj
FileSize: 128
NarHash: sha256:0b23gzq3hk3zn6yphpcy6vqpfxfnp4kc08n2i2069lqjrnc8l0rw
NarSize: 120
References: \nCA: fixed:r:sha256:0b23gzq3hk3zn6yphpcy6vqpfxfnp4kc08n2i2069lqjrnc8l0rw
";
    // Just the required keys.
    const MINIMAL: &str = "\
StorePath: /nix/store/s8fgmxxmwgdq68csz67bgc9zjzpr81zq-sf-test
URL: nar/x.nar
NarHash: sha256:17n5csq6r0i4wcm401wyb5cfpkgx7v2yjjilal3ky2j8ipg6230p
NarSize: 168
";

    fn parse(text: &str) -> Result<NarInfo, NarInfoError> {
        NarInfo::parse(text, "/nix/store")
    }

    fn path(s: &str) -> StorePath {
        s.parse().unwrap()
    }

    #[test]
    fn parses_what_nix_writes() {
        let ni = parse(SIGNED).unwrap();
        assert_eq!(ni.store_path, path("y0dk771g0p06fg380a3lrh4vnfra8d55-multi"));
        assert_eq!(ni.url, "nar/1d8xkzfz5i00pgbl44wnf5clfsdchvf6l2isxkwd14gb9y9lyn8w.nar.xz");
        assert_eq!(ni.compression, "xz");
        assert_eq!(ni.file_hash.unwrap().to_string(), "sha256:1d8xkzfz5i00pgbl44wnf5clfsdchvf6l2isxkwd14gb9y9lyn8w");
        assert_eq!(ni.file_size, Some(232));
        // `nix path-info --json` gives the NAR hash in SRI form.
        assert_eq!(ni.nar_hash.to_sri(), "sha256-QSqDKlizdPYKCcqEmUiEl0ZBLZiNgCUaPfM7IjLlFYc=");
        assert_eq!(ni.nar_size, 256);
        let names: Vec<String> = ni.references.iter().map(|r| r.name().to_owned()).collect();
        assert_eq!(names, ["b", "a", "c"]);
        assert_eq!(ni.deriver, None);
        assert_eq!(ni.signatures.len(), 1);
        assert!(matches!(ni.ca, Some(ContentAddress::Text { .. })));
        let pk: VerifyingKey = PK.parse().unwrap();
        assert!(pk.verify(&ni.fingerprint("/nix/store").unwrap(), &ni.signatures[0]));

        let built = parse(BUILT).unwrap();
        assert_eq!(built.compression, "none");
        assert_eq!(built.file_hash, Some(built.nar_hash));
        assert_eq!(built.references, [path("s5jxvw5aj6iw28zxqd6ccqvqxcdq2cha-tf.txt")]);
        assert_eq!(built.deriver, Some(path("6yc50x3lgmk4khmfip38h2zwig0w4di4-sf-test.drv")));
        assert_eq!((built.signatures.len(), built.ca), (0, None));

        let fixed = parse(FIXED).unwrap();
        assert!(fixed.references.is_empty());
        let Some(ContentAddress::Fixed { method, hash }) = fixed.ca else { panic!("{:?}", fixed.ca) };
        assert_eq!((method, hash), (IngestionMethod::Recursive, fixed.nar_hash));
    }

    #[test]
    fn renders_byte_for_byte() {
        for text in [SIGNED, BUILT, FIXED] {
            assert_eq!(parse(text).unwrap().render("/nix/store"), text);
        }
        let gnu = parse(BUILT).unwrap().render("/gnu/store");
        assert!(gnu.starts_with("StorePath: /gnu/store/s8fgmxxmwgdq68csz67bgc9zjzpr81zq-sf-test\n"));
        assert_eq!(NarInfo::parse(&gnu, "/gnu/store").unwrap(), parse(BUILT).unwrap());
    }

    #[test]
    fn defaults() {
        let ni = parse(MINIMAL).unwrap();
        assert_eq!(ni.compression, "bzip2", "a missing Compression means bzip2");
        assert_eq!((ni.file_hash, ni.file_size, ni.deriver.as_ref(), ni.ca), (None, None, None, None));
        assert!(ni.references.is_empty() && ni.signatures.is_empty());
        let rendered = ni.render("/nix/store");
        assert_eq!(
            rendered,
            MINIMAL.replace("URL: nar/x.nar\n", "URL: nar/x.nar\nCompression: bzip2\n") + "References: \n"
        );
        assert_eq!(parse(&rendered).unwrap(), ni);
        assert_eq!(parse(&format!("{MINIMAL}Compression: \n")).unwrap().compression, "bzip2");
    }

    #[test]
    fn accepts_what_nix_accepts() {
        let base = parse(BUILT).unwrap();
        let sri = BUILT.replace(
            "NarHash: sha256:17n5csq6r0i4wcm401wyb5cfpkgx7v2yjjilal3ky2j8ipg6230p",
            &format!("NarHash: {}", base.nar_hash.to_sri()),
        );
        let hex = BUILT.replace(
            "NarHash: sha256:17n5csq6r0i4wcm401wyb5cfpkgx7v2yjjilal3ky2j8ipg6230p",
            &format!("NarHash: {}", base.nar_hash.to_base16_string()),
        );
        let unknown = format!("System: x86_64-linux\nFuture: 1\nFuture: 2\n{BUILT}");
        let no_newline = BUILT.trim_end().to_owned();
        let placeholder = BUILT.replace("6yc50x3lgmk4khmfip38h2zwig0w4di4-sf-test.drv", "unknown-deriver");
        for text in [sri, hex, unknown, no_newline] {
            assert_eq!(parse(&text).unwrap(), base, "{text}");
        }
        assert_eq!(parse(&placeholder).unwrap(), NarInfo { deriver: None, ..base.clone() });

        // Empty CA and References without the space; repeats collapse.
        let sig =
            "Sig: test-1:wLfRvHfXvaFWUk3t9oqBlaVbktxfaa8Hf/Th19GLe+YjFU6YbxV+N0YIMr1O+l3ti+78Bl8/RPWWn1YfoQLuCg==\n";
        let text = format!("{MINIMAL}References:\nCA: \n{sig}{sig}");
        let ni = parse(&text).unwrap();
        assert_eq!((ni.references.len(), ni.signatures.len(), ni.ca), (0, 1, None));
        let refs = "References: w4jbr2ld1fgmlbfcjc4zy4za39772a2a-c  n3v3lqccv8x9r6csff1x3q3ylvf19py8-b \
                    w4jbr2ld1fgmlbfcjc4zy4za39772a2a-c\n";
        let ni = parse(&format!("{MINIMAL}{refs}")).unwrap();
        assert_eq!(
            ni.references,
            [path("w4jbr2ld1fgmlbfcjc4zy4za39772a2a-c"), path("n3v3lqccv8x9r6csff1x3q3ylvf19py8-b")]
        );

        // Any NAR hash algorithm reads, but only sha256 has a fingerprint.
        let sha512 = format!("sha512-{}", data_encoding::BASE64.encode(&[1; 64]));
        let ni =
            parse(&MINIMAL.replace("sha256:17n5csq6r0i4wcm401wyb5cfpkgx7v2yjjilal3ky2j8ipg6230p", &sha512)).unwrap();
        assert_eq!((ni.nar_hash.algo(), ni.fingerprint("/nix/store")), (HashAlgo::Sha512, None));
    }

    #[test]
    fn rejects_with_line_and_key() {
        let replaced = |from: &str, to: &str| {
            assert!(BUILT.contains(from), "{from}");
            BUILT.replacen(from, to, 1)
        };
        let invalid = |text: &str, want_line: usize, want_key: &str| match parse(text) {
            Err(NarInfoError::Invalid { line, key, reason }) => {
                assert_eq!((line, key), (want_line, want_key), "{reason}");
                reason
            }
            other => panic!("{text}: {other:?}"),
        };
        let outside = invalid(&replaced("/nix/store/", "/gnu/store/"), 1, "StorePath");
        assert!(matches!(outside, FieldError::StorePath(StorePathError::OutsideStore { .. })));
        invalid(&replaced("/nix/store/s8fgmxxmwgdq68csz67bgc9zjzpr81zq-sf-test", "/nix/store/x"), 1, "StorePath");
        assert!(matches!(
            invalid(&replaced("nar/17n5csq6r0i4wcm401wyb5cfpkgx7v2yjjilal3ky2j8ipg6230p.nar", ""), 2, "URL"),
            FieldError::Empty
        ));
        invalid(&replaced("FileHash: sha256:", "FileHash: sha1:"), 4, "FileHash");
        for bad in ["", "+168", "-1", "0x10", "1 ", "18446744073709551616"] {
            let text = replaced("FileSize: 168", &format!("FileSize: {bad}"));
            assert!(matches!(invalid(&text, 5, "FileSize"), FieldError::Number(_)), "{bad:?}");
        }
        invalid(&replaced("NarHash: sha256:1", "NarHash: sha256:e"), 6, "NarHash");
        assert!(matches!(invalid(&replaced("NarSize: 168", "NarSize: 0"), 7, "NarSize"), FieldError::Zero));
        invalid(&replaced("References: ", "References: /nix/store/"), 8, "References");
        invalid(&replaced("Deriver: ", "Deriver: x"), 9, "Deriver");
        invalid(&format!("{BUILT}Sig: test-1\n"), 10, "Sig");
        invalid(&format!("{BUILT}CA: fixed:sha256-abc\n"), 10, "CA");
        // A carriage return stays in the value, as in Nix.
        invalid(&BUILT.replace('\n', "\r\n"), 1, "StorePath");

        let msg = parse(&replaced("NarSize: 168", "NarSize: 0")).unwrap_err().to_string();
        assert_eq!(msg, "narinfo line 7: NarSize: must not be zero");

        for (text, want) in [
            (format!("{BUILT}NarHash: sha256:17n5csq6r0i4wcm401wyb5cfpkgx7v2yjjilal3ky2j8ipg6230p\n"), "NarHash"),
            (format!("{BUILT}References: \n"), "References"),
            (format!("{FIXED}CA: \n"), "CA"),
            (format!("{BUILT}Compression: none\n"), "Compression"),
        ] {
            assert!(matches!(parse(&text), Err(NarInfoError::Duplicate { line: 10, key }) if key == want), "{text}");
        }
        for (text, want) in [
            (format!("{BUILT}\n"), 10),
            (format!("{BUILT}NarSize:168\n"), 10),
            (format!("{BUILT}: x\n"), 10),
            (replaced("URL: ", "URL "), 2),
        ] {
            assert!(matches!(parse(&text), Err(NarInfoError::Syntax { line }) if line == want), "{text:?}");
        }
        for (key, name) in
            [("StorePath: ", "StorePath"), ("URL: ", "URL"), ("NarHash: ", "NarHash"), ("NarSize: ", "NarSize")]
        {
            let text: String = BUILT.lines().filter(|l| !l.starts_with(key)).map(|l| format!("{l}\n")).collect();
            assert!(matches!(parse(&text), Err(NarInfoError::Missing(k)) if k == name), "{name}");
        }
        assert!(matches!(parse(""), Err(NarInfoError::Missing("StorePath"))));
    }
}
