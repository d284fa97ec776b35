//! Raw images: the file is the disk.

use crate::disk::{Extent, Format, VirtualDisk};
use crate::error::Result;
use crate::io::Source;

pub struct RawDisk {
    src: Source,
}

impl RawDisk {
    pub fn new(src: Source) -> Self {
        RawDisk { src }
    }
}

impl VirtualDisk for RawDisk {
    fn format(&self) -> Format {
        Format::Raw
    }
    fn variant(&self) -> String {
        "raw".into()
    }
    fn size(&self) -> u64 {
        self.src.len()
    }
    fn allocated(&self) -> Result<Vec<Extent>> {
        // Holes are not visible through std; callers find zeros by looking at the data.
        let size = self.size();
        Ok(if size == 0 {
            vec![]
        } else {
            vec![Extent {
                offset: 0,
                length: size,
            }]
        })
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let size = self.size();
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > size)
        {
            return Err(crate::error::DiskError::OutOfRange {
                offset,
                len: buf.len() as u64,
                size,
            });
        }
        self.src.read_exact_at(buf, offset)
    }
}
