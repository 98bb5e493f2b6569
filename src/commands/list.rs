//! `imgbuild list`: the catalog.

use crate::definition::{Arch, Catalog};
use crate::error::Result;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct ImageRow {
    pub name: String,
    pub description: String,
    pub arch: Vec<Arch>,
    /// The image it extends, if any.
    pub extends: Option<String>,
    #[serde(rename = "abstract")]
    pub is_abstract: bool,
    pub features: Vec<&'static str>,
}

pub fn list(catalog: &Catalog) -> Result<Vec<ImageRow>> {
    let mut rows = Vec::new();
    for name in catalog.names()? {
        let r = catalog.load(&name)?;
        let d = &r.definition;
        rows.push(ImageRow {
            description: d.description.clone(),
            arch: d.arch.clone(),
            extends: r.chain.get(1).map(|f| f.name.clone()),
            is_abstract: d.is_abstract,
            features: d.features.enabled(),
            name,
        });
    }
    Ok(rows)
}
