//! `imgbuild show`: an image's resolved definition.

use crate::definition::{Catalog, Definition};
use crate::error::Result;

pub struct Shown {
    pub definition: Definition,
    /// The files it was resolved from, child first (`a <- b <- c`).
    pub chain: String,
}

pub fn show(catalog: &Catalog, image: &str) -> Result<Shown> {
    let r = catalog.load_checked(image)?;
    Ok(Shown {
        chain: r
            .chain
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(" <- "),
        definition: r.definition,
    })
}
