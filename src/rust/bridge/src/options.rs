//! Typed access to the named option lists that the R side builds. The R
//! side validates user input first, so an error here means that the R code
//! and the bridge disagree. The message names the field in either case.

use extendr_api::prelude::*;

pub struct Options {
    list: List,
}

type Result<T> = std::result::Result<T, String>;

impl Options {
    pub fn new(list: List) -> Self {
        Options { list }
    }

    fn field(&self, name: &str) -> Result<Robj> {
        self.list
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
            .ok_or_else(|| format!("option `{name}` is missing"))
    }

    pub fn real(&self, name: &str) -> Result<f64> {
        let value = self.field(name)?;
        value
            .as_real()
            .or_else(|| value.as_integer().map(f64::from))
            .ok_or_else(|| format!("option `{name}` must be a single number"))
    }

    pub fn count(&self, name: &str) -> Result<usize> {
        let value = self.real(name)?;
        if value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value <= 1e15 {
            Ok(value as usize)
        } else {
            Err(format!("option `{name}` must be a non-negative whole number, not {value}"))
        }
    }

    /// Reads a seed given as a whole number in [0, 2^53].
    pub fn seed(&self, name: &str) -> Result<u64> {
        Ok(self.count(name)? as u64)
    }

    pub fn flag(&self, name: &str) -> Result<bool> {
        self.field(name)?.as_bool().ok_or_else(|| format!("option `{name}` must be TRUE or FALSE"))
    }

    pub fn string(&self, name: &str) -> Result<String> {
        self.field(name)?
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("option `{name}` must be a string"))
    }

    /// Reads a double vector, or None when the field is NULL or absent.
    pub fn optional_reals(&self, name: &str) -> Result<Option<Vec<f64>>> {
        let value = match self.field(name) {
            Ok(value) => value,
            Err(_) => return Ok(None),
        };
        if value.is_null() {
            return Ok(None);
        }
        value
            .as_real_slice()
            .map(|slice| Some(slice.to_vec()))
            .ok_or_else(|| format!("option `{name}` must be a double vector"))
    }

    pub fn reals_of_length(&self, name: &str, length: usize) -> Result<Vec<f64>> {
        match self.optional_reals(name)? {
            Some(values) if values.len() == length => Ok(values),
            Some(values) => Err(format!("`{name}` has {} values, expected {length}", values.len())),
            None => Err(format!("`{name}` is missing")),
        }
    }
}
