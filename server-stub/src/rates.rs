//! The rate sheet (R1): products, their executables and how they are charged.
//!
//! The sample sheet is compiled into the binary so a fresh server works out of the
//! box; admins replace it with `--rates FILE` in the same TOML form.

use std::collections::HashMap;
use std::path::Path;

use flex_protocol::api::{ChargeModel, Product};
use flex_protocol::ProductId;
use serde::Deserialize;

/// The sheet shipped with the server.
pub const SAMPLE_RATES: &str = include_str!("../rates/sample-rates.toml");

#[derive(Debug, thiserror::Error)]
pub enum RatesError {
    #[error("cannot read rate sheet {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("rate sheet is not valid TOML: {0}")]
    Parse(String),
    #[error("rate sheet product '{id}': {why}")]
    Invalid { id: ProductId, why: &'static str },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SheetFile {
    products: Vec<Product>,
}

#[derive(Debug, Clone)]
pub struct RateSheet {
    products: Vec<Product>,
    index: HashMap<ProductId, usize>,
}

impl RateSheet {
    pub fn sample() -> Self {
        Self::parse(SAMPLE_RATES).expect("the shipped rate sheet is valid")
    }

    pub fn load(path: &Path) -> Result<Self, RatesError> {
        let text = std::fs::read_to_string(path).map_err(|source| RatesError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, RatesError> {
        let file: SheetFile =
            toml::from_str(text).map_err(|e| RatesError::Parse(e.message().to_string()))?;
        let mut index = HashMap::new();
        for (i, p) in file.products.iter().enumerate() {
            let invalid = |why| RatesError::Invalid {
                id: p.id.clone(),
                why,
            };
            // Ids follow the one rule for product ids: `ProductId` checked
            // them as the sheet was read.
            if let ChargeModel::PerResult { per: 0, .. } = p.charge {
                return Err(invalid("per_result 'per' must be at least 1"));
            }
            if p.executables
                .windows_version
                .iter()
                .any(|v| v.original_filename.is_none() && v.product_name.is_none())
            {
                return Err(invalid(
                    "each windows_version entry needs original_filename or product_name",
                ));
            }
            if index.insert(p.id.clone(), i).is_some() {
                return Err(invalid("id appears twice"));
            }
        }
        Ok(RateSheet {
            products: file.products,
            index,
        })
    }

    /// The product with this id (a `&ProductId`, or text such as a URL's).
    pub fn get<Q: AsRef<str> + ?Sized>(&self, id: &Q) -> Option<&Product> {
        self.index.get(id.as_ref()).map(|&i| &self.products[i])
    }

    pub fn products(&self) -> &[Product] {
        &self.products
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_sheet_has_the_design_rates() {
        let sheet = RateSheet::sample();
        assert_eq!(
            sheet.get("autocad").unwrap().charge,
            ChargeModel::Daily { tokens: 7 }
        );
        assert_eq!(
            sheet.get("recap-photo").unwrap().charge,
            ChargeModel::PerResult { tokens: 1, per: 50 }
        );
        for id in [
            "revit",
            "navisworks",
            "inventor",
            "civil3d",
            "3dsmax",
            "maya",
            "fusion",
        ] {
            let p = sheet.get(id).unwrap_or_else(|| panic!("{id} missing"));
            assert!(p.sample, "{id} must be labelled a sample rate");
            assert!(!p.executables.linux.is_empty());
            assert!(!p.executables.windows.is_empty());
            assert!(!p.executables.macos.is_empty());
        }
    }

    #[test]
    fn duplicate_and_bad_ids_are_named() {
        let dup = "[[products]]\nid='a'\nname='A'\ncharge={model='daily',tokens=1}\n\
                   [[products]]\nid='a'\nname='A'\ncharge={model='daily',tokens=1}\n";
        assert!(RateSheet::parse(dup)
            .unwrap_err()
            .to_string()
            .contains("'a'"));
        let bad = "[[products]]\nid='Auto CAD'\nname='A'\ncharge={model='daily',tokens=1}\n";
        assert!(RateSheet::parse(bad)
            .unwrap_err()
            .to_string()
            .contains("product 'Auto CAD' is not a product id"));
    }

    #[test]
    fn windows_version_entries_need_a_field() {
        let sheet = |entry: &str| {
            format!(
                "[[products]]\nid='acad'\nname='A'\ncharge={{model='daily',tokens=1}}\n\
                 executables={{windows=['acad.exe'], windows_version=[{entry}]}}\n"
            )
        };
        let ok = RateSheet::parse(&sheet("{original_filename='acad.exe'}")).unwrap();
        let p = ok.get("acad").unwrap();
        assert!(p.executables.windows_version[0].matches(Some("ACAD.EXE"), None));
        let err = RateSheet::parse(&sheet("{}")).unwrap_err().to_string();
        assert!(
            err.contains("'acad'") && err.contains("windows_version"),
            "{err}"
        );
        let err = RateSheet::parse(&sheet("{file='x'}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("file"), "{err}");
    }
}
