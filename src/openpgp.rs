//! The fingerprint of an ASCII-armoured OpenPGP public key, for checking the apt repository
//! keys a definition embeds against the fingerprint it declares, when it is loaded (no gpg, no
//! keyserver). Only what that needs: the armour (RFC 4880 §6.2: header line, optional armour
//! headers, a blank line, base64, the `=` CRC-24 line, footer), packet headers in both formats
//! (§4.2) and the fingerprint of the first packet, the primary public key: SHA-1 over 0x99,
//! a two-octet length and the packet body for a v4 key (§12.2), SHA-256 over 0x9B, a
//! four-octet length and the body for a v6 key (RFC 9580 §5.5.4). A test compares it with
//! gpg's own on the catalog's keys.

use base64::Engine;
use sha1::Digest as _;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("not an ASCII-armoured public key block (-----BEGIN PGP PUBLIC KEY BLOCK-----)")]
    NotArmoured,
    #[error("a private key block: only public keys belong in a definition")]
    Private,
    #[error("the armour's base64 does not decode: {0}")]
    Base64(String),
    #[error("the armour's checksum does not match its content (a damaged or edited key)")]
    Checksum,
    #[error("the key data is cut short or malformed ({0})")]
    Malformed(&'static str),
    #[error("the first packet is not a public key (tag {0})")]
    NotPublicKey(u8),
    #[error("public key version {0} is not supported (4 or 6)")]
    Version(u8),
}

const BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
const END: &str = "-----END PGP PUBLIC KEY BLOCK-----";

/// The primary key's fingerprint, upper-case hex (40 digits for v4, 64 for v6).
pub fn fingerprint(armoured: &str) -> Result<String, KeyError> {
    let data = dearmour(armoured)?;
    let (tag, body) = first_packet(&data)?;
    if tag != 6 {
        return Err(KeyError::NotPublicKey(tag));
    }
    let version = *body
        .first()
        .ok_or(KeyError::Malformed("empty key packet"))?;
    let digest = match version {
        4 => {
            let len = u16::try_from(body.len()).map_err(|_| KeyError::Malformed("key too long"))?;
            let mut h = sha1::Sha1::new();
            h.update([0x99]);
            h.update(len.to_be_bytes());
            h.update(body);
            h.finalize().to_vec()
        }
        6 => {
            let len = u32::try_from(body.len()).map_err(|_| KeyError::Malformed("key too long"))?;
            let mut h = sha2::Sha256::new();
            h.update([0x9b]);
            h.update(len.to_be_bytes());
            h.update(body);
            h.finalize().to_vec()
        }
        v => return Err(KeyError::Version(v)),
    };
    Ok(crate::hex(&digest).to_uppercase())
}

/// A fingerprint as people write it (spaces, lower case, `0x`) in the form [`fingerprint`]
/// returns.
pub fn normalize(fpr: &str) -> String {
    let s = fpr.trim();
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    s.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_uppercase()
}

/// The binary packets of an ASCII-armoured public key block (what `gpg --dearmor` writes),
/// its CRC checked when present.
pub fn dearmour(text: &str) -> Result<Vec<u8>, KeyError> {
    if text.contains("PRIVATE KEY BLOCK") {
        return Err(KeyError::Private);
    }
    let mut lines = text.lines().map(str::trim_end);
    lines
        .by_ref()
        .find(|l| l.trim_start() == BEGIN)
        .ok_or(KeyError::NotArmoured)?;
    // Armour headers ("Version: ...", "Comment: ...") end at the first blank line.
    let mut body: Vec<&str> = Vec::new();
    let mut in_headers = true;
    let mut crc = None;
    let mut ended = false;
    for l in lines {
        let l = l.trim_start();
        if l == END {
            ended = true;
            break;
        }
        if in_headers {
            if l.is_empty() {
                in_headers = false;
            } else if !l.contains(": ") {
                // No headers at all: this is already base64.
                in_headers = false;
                body.push(l);
            }
            continue;
        }
        if let Some(c) = l.strip_prefix('=') {
            crc = Some(c.to_string());
        } else if !l.is_empty() {
            body.push(l);
        }
    }
    if !ended {
        return Err(KeyError::NotArmoured);
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let data = b64
        .decode(body.concat())
        .map_err(|e| KeyError::Base64(e.to_string()))?;
    if let Some(c) = crc {
        let want = b64.decode(c).map_err(|e| KeyError::Base64(e.to_string()))?;
        let got = crc24(&data).to_be_bytes();
        if want != got[1..] {
            return Err(KeyError::Checksum);
        }
    }
    Ok(data)
}

/// RFC 4880 §6.1.
fn crc24(data: &[u8]) -> u32 {
    let mut crc: u32 = 0xB704CE;
    for &b in data {
        crc ^= u32::from(b) << 16;
        for _ in 0..8 {
            crc <<= 1;
            if crc & 0x100_0000 != 0 {
                crc ^= 0x186_4CFB;
            }
        }
    }
    crc & 0xFF_FFFF
}

/// The first packet's tag and body.
fn first_packet(data: &[u8]) -> Result<(u8, &[u8]), KeyError> {
    let short = KeyError::Malformed("packet header");
    let &h = data.first().ok_or(KeyError::Malformed("no packet"))?;
    if h & 0x80 == 0 {
        return Err(KeyError::Malformed("not a packet header"));
    }
    let (tag, len, start) = if h & 0x40 != 0 {
        // New format: one-, two- or five-octet lengths (partial lengths are not for keys).
        let tag = h & 0x3f;
        let &o1 = data.get(1).ok_or(short)?;
        match o1 {
            0..=191 => (tag, usize::from(o1), 2),
            192..=223 => {
                let &o2 = data.get(2).ok_or(KeyError::Malformed("packet length"))?;
                (
                    tag,
                    ((usize::from(o1) - 192) << 8) + usize::from(o2) + 192,
                    3,
                )
            }
            255 => {
                let b = data.get(2..6).ok_or(KeyError::Malformed("packet length"))?;
                (
                    tag,
                    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize,
                    6,
                )
            }
            _ => return Err(KeyError::Malformed("partial length on a key packet")),
        }
    } else {
        // Old format: the length type is the low two bits.
        let tag = (h >> 2) & 0x0f;
        match h & 3 {
            0 => (tag, usize::from(*data.get(1).ok_or(short)?), 2),
            1 => {
                let b = data.get(1..3).ok_or(KeyError::Malformed("packet length"))?;
                (tag, usize::from(u16::from_be_bytes([b[0], b[1]])), 3)
            }
            2 => {
                let b = data.get(1..5).ok_or(KeyError::Malformed("packet length"))?;
                (
                    tag,
                    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize,
                    5,
                )
            }
            _ => return Err(KeyError::Malformed("indeterminate length on a key packet")),
        }
    };
    if tag == 5 {
        return Err(KeyError::Private);
    }
    let body = data
        .get(start..start + len)
        .ok_or(KeyError::Malformed("packet shorter than its length"))?;
    Ok((tag, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An armour around `data` as gpg writes it.
    fn armour(data: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = b64.encode(data);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let crc = b64.encode(&crc24(data).to_be_bytes()[1..]);
        format!(
            "{BEGIN}\nComment: test\n\n{}\n={crc}\n{END}\n",
            lines.join("\n")
        )
    }

    /// A v4 public key packet (new format) with a made-up 2-octet-length body.
    fn v4_packet(body_len: usize) -> (Vec<u8>, Vec<u8>) {
        let mut body = vec![4u8, 0x5e, 0x00, 0x00, 0x01, 22];
        body.resize(body_len, 0xab);
        let mut pkt = vec![0xc6];
        if body_len < 192 {
            pkt.push(body_len as u8);
        } else {
            let l = body_len - 192;
            pkt.push(((l >> 8) + 192) as u8);
            pkt.push((l & 0xff) as u8);
        }
        pkt.extend(&body);
        (pkt, body)
    }

    #[test]
    fn a_v4_fingerprint_is_sha1_over_the_framed_body() {
        for len in [40, 300] {
            let (pkt, body) = v4_packet(len);
            let mut h = sha1::Sha1::new();
            h.update([0x99, (len >> 8) as u8, len as u8]);
            h.update(&body);
            let want = crate::hex(&h.finalize()).to_uppercase();
            assert_eq!(fingerprint(&armour(&pkt)).unwrap(), want);
            // The old packet format (tag 6, two-octet length) gives the same key.
            let mut old = vec![0x99, (len >> 8) as u8, len as u8];
            old.extend(&body);
            assert_eq!(fingerprint(&armour(&old)).unwrap(), want);
        }
    }

    #[test]
    fn damaged_private_and_foreign_blocks_are_refused() {
        let (pkt, _) = v4_packet(40);
        let good = armour(&pkt);
        // One base64 character changed: the CRC no longer matches.
        let lines: Vec<&str> = good.lines().collect();
        let bad_line = {
            let l = lines[3];
            let c = if l.starts_with('A') { "B" } else { "A" };
            format!("{c}{}", &l[1..])
        };
        let damaged = good.replace(lines[3], &bad_line);
        assert_eq!(fingerprint(&damaged), Err(KeyError::Checksum));
        assert_eq!(
            fingerprint(
                "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nxx\n-----END PGP PRIVATE KEY BLOCK-----"
            ),
            Err(KeyError::Private)
        );
        let mut secret = pkt.clone();
        secret[0] = 0xc5;
        assert_eq!(fingerprint(&armour(&secret)), Err(KeyError::Private));
        assert_eq!(fingerprint("ssh-ed25519 AAAA"), Err(KeyError::NotArmoured));
        assert_eq!(
            fingerprint(&good.replace(END, "")),
            Err(KeyError::NotArmoured)
        );
        let mut short = pkt.clone();
        short.truncate(20);
        assert!(matches!(
            fingerprint(&armour(&short)),
            Err(KeyError::Malformed(_))
        ));
    }

    #[test]
    fn fingerprints_are_compared_the_way_people_write_them() {
        assert_eq!(
            normalize("0x9dc8 5822 9FC7 DD38 854A  E2D8 8D81 803C 0EBF CD88"),
            "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"
        );
    }
}
