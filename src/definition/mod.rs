//! Image definitions: the model (serde), loading with `extends`, and validation with
//! file:line:column errors.

pub mod diagnostic;
pub mod load;
pub mod model;
pub mod source_map;
pub mod validate;

pub use diagnostic::{DefinitionError, Diagnostic, Diagnostics};
pub use load::{Catalog, Resolved};
pub use model::*;

impl Catalog {
    /// Loads and semantically checks `name`.
    pub fn load_checked(&self, name: &str) -> Result<Resolved, DefinitionError> {
        let r = self.load(name)?;
        validate::check(&r)?;
        Ok(r)
    }
}
