//! Output formats of `felis get`: calicoctl's aligned table (`ps`, `wide`), YAML and JSON.

use felis_api::{Kind, Resource};

/// An output format (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns, calicoctl's default.
    Ps,
    /// More columns.
    Wide,
    /// YAML.
    Yaml,
    /// JSON.
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "ps" => Ok(Format::Ps),
            "wide" => Ok(Format::Wide),
            "yaml" | "yml" => Ok(Format::Yaml),
            "json" => Ok(Format::Json),
            other => Err(format!(
                "unknown output format {other:?} (use ps, wide, yaml or json)"
            )),
        }
    }
}

/// Renders resources of one kind. `single` prints one object rather than a `<Kind>List`;
/// `with_namespace` adds calicoctl's NAMESPACE column for namespaced kinds.
pub fn render(
    kind: Kind,
    resources: &[Resource],
    format: Format,
    single: bool,
    with_namespace: bool,
) -> Result<String, String> {
    match format {
        Format::Ps | Format::Wide => Ok(table(
            kind,
            resources,
            format == Format::Wide,
            with_namespace,
        )),
        Format::Json => {
            let value = document(kind, resources, single);
            serde_json::to_string_pretty(&value)
                .map(|s| s + "\n")
                .map_err(|e| e.to_string())
        }
        Format::Yaml => yaml(&document(kind, resources, single)),
    }
}

/// Serializes a JSON value as YAML.
pub fn yaml(value: &serde_json::Value) -> Result<String, String> {
    serde_saphyr::to_string(value).map_err(|e| e.to_string())
}

fn document(kind: Kind, resources: &[Resource], single: bool) -> serde_json::Value {
    match (single, resources) {
        (true, [only]) => only.to_value(),
        _ => serde_json::json!({
            "apiVersion": kind.api_version(),
            "kind": format!("{}List", kind.name()),
            "items": resources.iter().map(Resource::to_value).collect::<Vec<_>>(),
        }),
    }
}

/// calicoctl's table: upper-case headers, columns padded to the widest cell plus three spaces.
pub fn table(kind: Kind, resources: &[Resource], wide: bool, with_namespace: bool) -> String {
    let namespaced = with_namespace && kind.is_namespaced();
    let mut rows: Vec<Vec<String>> = Vec::with_capacity(resources.len() + 1);
    let mut header: Vec<String> = Vec::new();
    if namespaced {
        header.push("NAMESPACE".into());
    }
    header.extend(
        felis_api::table::columns(kind, wide)
            .iter()
            .map(|c| c.to_string()),
    );
    rows.push(header);
    for r in resources {
        let mut row = Vec::new();
        if namespaced {
            row.push(r.metadata().namespace.clone().unwrap_or_default());
        }
        row.extend(felis_api::table::row(r, wide));
        rows.push(row);
    }
    align(&rows)
}

/// Pads cells into columns separated by three spaces.
pub fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            let pad = widths
                .get(c)
                .copied()
                .unwrap_or(0)
                .saturating_sub(cell.chars().count());
            line.push_str(&" ".repeat(pad + 3));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_pads_columns_to_the_widest_cell() {
        let rows = vec![
            vec!["NAME".to_string(), "CIDR".to_string()],
            vec![
                "default-ipv4-ippool".to_string(),
                "192.168.0.0/16".to_string(),
            ],
        ];
        assert_eq!(
            align(&rows),
            "NAME                  CIDR\ndefault-ipv4-ippool   192.168.0.0/16\n"
        );
    }
}
