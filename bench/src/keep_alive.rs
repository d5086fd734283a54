//! One HTTP/1.1 connection kept alive across requests, read by hand: the instruction counts
//! need windows with requests only, no connection set-ups, and the fleet bench polls Envoys
//! back to back without paying a connection per poll.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

type Result<T> = std::result::Result<T, String>;

/// One HTTP/1.1 connection kept alive across requests, so that the counted window holds
/// requests only, not connection set-ups.
pub struct KeepAlive {
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    pub fn connect(addr: &str) -> Result<KeepAlive> {
        let stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(KeepAlive {
            reader: BufReader::new(stream),
        })
    }

    /// Sends `GET /` and reads the whole answer; returns its status.
    pub fn get(&mut self) -> Result<u16> {
        self.get_path("/")
    }

    /// Sends `GET path` and reads the whole answer; returns its status.
    pub fn get_path(&mut self, path: &str) -> Result<u16> {
        self.reader
            .get_mut()
            .write_all(format!("GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let (status, length, chunked) = self.read_head()?;
        if chunked {
            school_system::client::read_chunked(&mut self.reader).map_err(|e| e.to_string())?;
        } else {
            let mut body = vec![0; length];
            self.reader
                .read_exact(&mut body)
                .map_err(|e| e.to_string())?;
        }
        Ok(status)
    }

    /// The status line and headers: status, content length, whether the body is chunked.
    fn read_head(&mut self) -> Result<(u16, usize, bool)> {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let (mut length, mut chunked) = (0, false);
        loop {
            line.clear();
            if self
                .reader
                .read_line(&mut line)
                .map_err(|e| e.to_string())?
                == 0
            {
                return Err("connection closed in the headers".into());
            }
            let Some((name, value)) = line.trim_end().split_once(':') else {
                return Ok((status, length, chunked));
            };
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().map_err(|_| "bad content-length")?,
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                _ => {}
            }
        }
    }
}
