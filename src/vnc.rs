//! A minimal RFB (VNC) client: log in with VNC authentication and capture one full frame.
//!
//! The smoke boot of a desktop image uses it to prove from the host what Guacamole or Kasm
//! would meet: the per-user TigerVNC session answers on the network and accepts the password
//! given at launch; the frame it returns is the desktop in smoke/screenshot.png.
//! RFB 3.8 (RFC 6143): security type 2 (VncAuth) or 1 (None), Raw encoding, 32-bit true colour.

use des::cipher::{generic_array::GenericArray, BlockEncrypt, KeyInit};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum VncError {
    #[error("VNC {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("VNC {addr}: not an RFB server (greeting {greeting:?})")]
    NotRfb { addr: SocketAddr, greeting: String },
    #[error("VNC {addr}: the server refused the connection: {reason}")]
    Refused { addr: SocketAddr, reason: String },
    #[error("VNC {addr}: the server offers no security type this client speaks ({offered:?}; VncAuth = 2, None = 1)")]
    NoSecurityType { addr: SocketAddr, offered: Vec<u8> },
    #[error("VNC {addr}: authentication failed: {reason}")]
    AuthFailed { addr: SocketAddr, reason: String },
    #[error("VNC {addr}: the server asks for a password and none was given")]
    NeedPassword { addr: SocketAddr },
    #[error("VNC {addr}: unexpected server message type {kind}")]
    Protocol { addr: SocketAddr, kind: u8 },
    #[error("writing {path}: {message}")]
    Png { path: String, message: String },
}

/// One captured frame, RGB, 8 bits per channel.
#[derive(Clone, Debug)]
pub struct Frame {
    pub width: u16,
    pub height: u16,
    pub desktop_name: String,
    pub rgb: Vec<u8>,
}

impl Frame {
    /// How many distinct colours the frame has (capped): a blank or single-colour screen has
    /// one or two, a desktop with a panel, icons and a wallpaper has hundreds.
    pub fn distinct_colours(&self, cap: usize) -> usize {
        let mut seen = HashSet::new();
        for px in self.rgb.chunks_exact(3) {
            seen.insert([px[0], px[1], px[2]]);
            if seen.len() >= cap {
                break;
            }
        }
        seen.len()
    }

    pub fn write_png(&self, path: &Path) -> Result<(), VncError> {
        let err = |message: String| VncError::Png {
            path: path.display().to_string(),
            message,
        };
        let tmp = path.with_extension("png.part");
        let file = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
        let mut enc = png::Encoder::new(
            std::io::BufWriter::new(file),
            self.width as u32,
            self.height as u32,
        );
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| err(e.to_string()))?;
        w.write_image_data(&self.rgb)
            .map_err(|e| err(e.to_string()))?;
        w.finish().map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
    }
}

/// The VncAuth response: the challenge DES-encrypted with the password (at most 8 bytes,
/// zero-padded) as key, each key byte bit-mirrored as the RFB spec's DES variant wants.
pub fn vnc_auth_response(password: &str, challenge: &[u8; 16]) -> [u8; 16] {
    let mut key = [0u8; 8];
    for (k, b) in key.iter_mut().zip(password.as_bytes()) {
        *k = b.reverse_bits();
    }
    let cipher = des::Des::new_from_slice(&key).expect("an 8-byte DES key");
    let mut out = *challenge;
    for block in out.chunks_exact_mut(8) {
        cipher.encrypt_block(GenericArray::from_mut_slice(block));
    }
    out
}

struct Conn {
    s: TcpStream,
    addr: SocketAddr,
}

impl Conn {
    fn io(&self, source: std::io::Error) -> VncError {
        VncError::Io {
            addr: self.addr,
            source,
        }
    }
    fn read_n(&mut self, n: usize) -> Result<Vec<u8>, VncError> {
        let mut b = vec![0u8; n];
        self.s.read_exact(&mut b).map_err(|e| self.io(e))?;
        Ok(b)
    }
    fn u8(&mut self) -> Result<u8, VncError> {
        Ok(self.read_n(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, VncError> {
        let b = self.read_n(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, VncError> {
        let b = self.read_n(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self) -> Result<String, VncError> {
        let n = self.u32()? as usize;
        let b = self.read_n(n.min(1 << 20))?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }
    fn send(&mut self, b: &[u8]) -> Result<(), VncError> {
        self.s.write_all(b).map_err(|e| self.io(e))
    }
}

/// Connects, authenticates and captures the whole framebuffer once.
pub fn capture(
    addr: SocketAddr,
    password: Option<&str>,
    timeout: Duration,
) -> Result<Frame, VncError> {
    let io = |source| VncError::Io { addr, source };
    let s = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut c = Conn { s, addr };

    let greeting = c.read_n(12)?;
    let g = String::from_utf8_lossy(&greeting).into_owned();
    let Some(version) = g.strip_prefix("RFB ").map(|v| v.trim_end().to_string()) else {
        return Err(VncError::NotRfb { addr, greeting: g });
    };
    let minor: u32 = version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if minor < 7 {
        return Err(VncError::NotRfb { addr, greeting: g });
    }
    c.send(b"RFB 003.008\n")?;
    let n = c.u8()?;
    if n == 0 {
        let reason = c.string()?;
        return Err(VncError::Refused { addr, reason });
    }
    let offered = c.read_n(n as usize)?;
    if offered.contains(&2) && password.is_some() {
        c.send(&[2])?;
        let ch: [u8; 16] = c.read_n(16)?.try_into().expect("16 bytes");
        let resp = vnc_auth_response(password.unwrap_or_default(), &ch);
        c.send(&resp)?;
    } else if offered.contains(&1) {
        c.send(&[1])?;
    } else if offered.contains(&2) {
        return Err(VncError::NeedPassword { addr });
    } else {
        return Err(VncError::NoSecurityType { addr, offered });
    }
    if c.u32()? != 0 {
        let reason = c.string().unwrap_or_else(|_| "no reason given".into());
        return Err(VncError::AuthFailed { addr, reason });
    }
    c.send(&[1])?; // ClientInit: shared, do not disconnect other viewers
    let width = c.u16()?;
    let height = c.u16()?;
    let _server_format = c.read_n(16)?;
    let desktop_name = c.string()?;

    // SetPixelFormat: 32 bpp, depth 24, little-endian true colour, red at bit 16.
    let mut spf = vec![0u8, 0, 0, 0, 32, 24, 0, 1];
    spf.extend_from_slice(&255u16.to_be_bytes());
    spf.extend_from_slice(&255u16.to_be_bytes());
    spf.extend_from_slice(&255u16.to_be_bytes());
    spf.extend_from_slice(&[16, 8, 0, 0, 0, 0]);
    c.send(&spf)?;
    // SetEncodings: Raw only.
    c.send(&[2, 0, 0, 1, 0, 0, 0, 0])?;
    // FramebufferUpdateRequest for all of it, not incremental.
    let mut req = vec![3u8, 0, 0, 0, 0, 0];
    req.extend_from_slice(&width.to_be_bytes());
    req.extend_from_slice(&height.to_be_bytes());
    c.send(&req)?;

    let (w, h) = (width as usize, height as usize);
    let mut rgb = vec![0u8; w * h * 3];
    loop {
        match c.u8()? {
            0 => {
                c.u8()?;
                let rects = c.u16()?;
                for _ in 0..rects {
                    let (x, y) = (c.u16()? as usize, c.u16()? as usize);
                    let (rw, rh) = (c.u16()? as usize, c.u16()? as usize);
                    let enc = c.u32()? as i32;
                    if enc != 0 {
                        // Only Raw was asked for; anything else cannot be skipped safely.
                        return Err(VncError::Protocol { addr, kind: 0 });
                    }
                    let px = c.read_n(rw * rh * 4)?;
                    for row in 0..rh {
                        let yy = y + row;
                        if yy >= h {
                            break;
                        }
                        for col in 0..rw {
                            let xx = x + col;
                            if xx >= w {
                                break;
                            }
                            let p = &px[(row * rw + col) * 4..][..4];
                            let o = (yy * w + xx) * 3;
                            rgb[o..o + 3].copy_from_slice(&[p[2], p[1], p[0]]);
                        }
                    }
                }
                return Ok(Frame {
                    width,
                    height,
                    desktop_name,
                    rgb,
                });
            }
            1 => {
                c.u8()?;
                c.u16()?;
                let n = c.u16()? as usize;
                c.read_n(n * 6)?;
            }
            2 => {}
            3 => {
                c.read_n(3)?;
                c.string()?;
            }
            kind => return Err(VncError::Protocol { addr, kind }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vnc_auth_matches_the_reference_des_variant() {
        // A zero challenge with the password "password", computed independently with
        // `openssl enc -des-ecb -nopad -K 0e86ceceeef64e26` (the bit-mirrored key).
        let r = vnc_auth_response("password", &[0u8; 16]);
        assert_eq!(crate::hex(&r[..8]), "ff97502e9422f089");
        assert_eq!(r[..8], r[8..], "ECB: equal blocks encrypt equally");
        // Only the first 8 bytes of a password count.
        assert_eq!(
            vnc_auth_response("password-longer", &[7u8; 16]),
            vnc_auth_response("password", &[7u8; 16])
        );
    }

    #[test]
    fn distinct_colours_counts_and_caps() {
        let f = Frame {
            width: 2,
            height: 2,
            desktop_name: String::new(),
            rgb: vec![0, 0, 0, 0, 0, 0, 255, 0, 0, 0, 0, 255],
        };
        assert_eq!(f.distinct_colours(100), 3);
        assert_eq!(f.distinct_colours(2), 2);
    }
}
