//! The export contract between the Python exporter and this worker, checked once when a
//! model is loaded: input `image` float32 `[N,1,150,150]` with a dynamic batch axis,
//! outputs `probs` float32 `[N,2]` and `attention_1..k` (k = 1..3) float32 `[N,1,H,W]`.
//!
//! The check works on plain declarations ([`Declared`]) so that it can be tested without
//! ONNX Runtime; turning a session's inputs and outputs into declarations is the
//! session module's job. It reports every problem it finds, not only the first.

use std::fmt;

use crate::domain::MODEL_SIZE;

/// Name of the model's only input.
pub const INPUT: &str = "image";
/// Name of the probabilities output, `[N, 2]`: P(FRI), P(FRII).
pub const PROBS: &str = "probs";
/// Prefix of the attention outputs `attention_1`, `attention_2`, ...
pub const ATTENTION_PREFIX: &str = "attention_";
/// Most attention gates the contract allows.
pub const MAX_GATES: usize = 3;

/// A dimension the model does not fix (a symbolic or unknown axis).
const DYNAMIC: i64 = -1;

/// One input or output as the model declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    pub name: String,
    /// `None` for a tensor of 32-bit floats; otherwise what the value is instead
    /// (for instance `"tensor of Int64"` or `"sequence"`).
    pub not_float: Option<String>,
    /// Dimensions, `-1` where dynamic; empty for a non-tensor.
    pub dims: Vec<i64>,
}

/// What a model that keeps the contract offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contract {
    /// Number of attention outputs, `attention_1..=gates`.
    pub gates: usize,
}

/// The ways a model can break the contract; a model may break several at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violations(pub Vec<String>);

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

/// Checks a model's declared inputs and outputs against the contract.
pub fn check(inputs: &[Declared], outputs: &[Declared]) -> Result<Contract, Violations> {
    let mut problems = Vec::new();
    let side = MODEL_SIZE as i64;

    match inputs {
        [input] if input.name == INPUT => check_tensor(
            input,
            &[DYNAMIC, 1, side, side],
            "[N,1,150,150]",
            &mut problems,
        ),
        _ => problems.push(format!(
            "expected exactly one input `{INPUT}`, found [{}]",
            names(inputs)
        )),
    }

    let mut probs = false;
    let mut gates: Vec<usize> = Vec::new();
    for output in outputs {
        if output.name == PROBS {
            probs = true;
            check_tensor(output, &[DYNAMIC, 2], "[N,2]", &mut problems);
        } else if let Some(gate) = attention_index(&output.name) {
            gates.push(gate);
            check_tensor(output, &[DYNAMIC, 1, 0, 0], "[N,1,H,W]", &mut problems);
            if let [.., h, w] = output.dims[..] {
                if h > 0 && w > 0 && h != w {
                    problems.push(format!("`{}` is {h}x{w}, not square", output.name));
                }
            }
        } else {
            problems.push(format!("unexpected output `{}`", output.name));
        }
    }
    if !probs {
        problems.push(format!("no `{PROBS}` output"));
    }
    gates.sort_unstable();
    let expected: Vec<usize> = (1..=gates.len()).collect();
    if gates.is_empty() {
        problems.push(format!("no `{ATTENTION_PREFIX}1` output"));
    } else if gates.len() > MAX_GATES {
        problems.push(format!(
            "{} attention outputs, at most {MAX_GATES} allowed",
            gates.len()
        ));
    } else if gates != expected {
        problems.push(format!(
            "attention outputs must be numbered 1..={} without gaps, found {gates:?}",
            gates.len()
        ));
    }

    if problems.is_empty() {
        Ok(Contract { gates: gates.len() })
    } else {
        Err(Violations(problems))
    }
}

/// Gate number of an `attention_<k>` output name (k >= 1, plain decimal).
fn attention_index(name: &str) -> Option<usize> {
    let digits = name.strip_prefix(ATTENTION_PREFIX)?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `want`: `-1` for the batch axis (must be dynamic), `0` for "any size", else the size.
fn check_tensor(value: &Declared, want: &[i64], shown: &str, problems: &mut Vec<String>) {
    let name = &value.name;
    if let Some(kind) = &value.not_float {
        problems.push(format!(
            "`{name}` is {kind}, expected a float32 tensor {shown}"
        ));
        return;
    }
    if value.dims.len() != want.len() {
        problems.push(format!(
            "`{name}` has shape {:?}, expected {shown}",
            value.dims
        ));
        return;
    }
    for (axis, (&have, &want)) in value.dims.iter().zip(want).enumerate() {
        match want {
            DYNAMIC if have != DYNAMIC => problems.push(format!(
                "`{name}` fixes its batch axis at {have}; export it with a dynamic batch axis"
            )),
            0 => {}
            w if w > 0 && have != w => problems.push(format!(
                "`{name}` has shape {:?}, expected {shown} (axis {axis} is {}, expected {w})",
                value.dims,
                if have == DYNAMIC {
                    "dynamic".to_string()
                } else {
                    have.to_string()
                }
            )),
            _ => {}
        }
    }
}

fn names(values: &[Declared]) -> String {
    values
        .iter()
        .map(|v| format!("`{}`", v.name))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float(name: &str, dims: &[i64]) -> Declared {
        Declared {
            name: name.into(),
            not_float: None,
            dims: dims.to_vec(),
        }
    }

    fn good_inputs() -> Vec<Declared> {
        vec![float("image", &[-1, 1, 150, 150])]
    }

    fn good_outputs(gates: usize) -> Vec<Declared> {
        let mut out = vec![float("probs", &[-1, 2])];
        out.extend((1..=gates).map(|k| float(&format!("attention_{k}"), &[-1, 1, -1, -1])));
        out
    }

    fn problems(inputs: &[Declared], outputs: &[Declared]) -> String {
        check(inputs, outputs)
            .expect_err("the model breaks the contract")
            .to_string()
    }

    #[test]
    fn accepts_one_to_three_gates_with_dynamic_or_fixed_square_maps() {
        for gates in 1..=3 {
            assert_eq!(
                check(&good_inputs(), &good_outputs(gates)),
                Ok(Contract { gates })
            );
        }
        let mut outputs = good_outputs(1);
        outputs[1].dims = vec![-1, 1, 37, 37];
        assert_eq!(check(&good_inputs(), &outputs), Ok(Contract { gates: 1 }));
    }

    #[test]
    fn output_order_does_not_matter() {
        let mut outputs = good_outputs(3);
        outputs.reverse();
        assert_eq!(check(&good_inputs(), &outputs), Ok(Contract { gates: 3 }));
    }

    #[test]
    fn refuses_wrong_input_name_size_type_and_fixed_batch() {
        let msg = problems(&[float("x", &[-1, 1, 150, 150])], &good_outputs(3));
        assert!(
            msg.contains("exactly one input `image`, found [`x`]"),
            "{msg}"
        );

        let msg = problems(&[float("image", &[-1, 1, 64, 64])], &good_outputs(3));
        assert!(msg.contains("axis 2 is 64, expected 150"), "{msg}");

        let msg = problems(&[float("image", &[8, 1, 150, 150])], &good_outputs(3));
        assert!(msg.contains("fixes its batch axis at 8"), "{msg}");

        let input = Declared {
            not_float: Some("tensor of Uint8".into()),
            ..good_inputs()[0].clone()
        };
        let msg = problems(&[input], &good_outputs(3));
        assert!(msg.contains("`image` is tensor of Uint8"), "{msg}");
    }

    #[test]
    fn refuses_missing_extra_and_misnumbered_outputs() {
        let msg = problems(&good_inputs(), &good_outputs(3)[1..]);
        assert!(msg.contains("no `probs` output"), "{msg}");

        let msg = problems(&good_inputs(), &good_outputs(0));
        assert!(msg.contains("no `attention_1` output"), "{msg}");

        let mut outputs = good_outputs(3);
        outputs.remove(2);
        let msg = problems(&good_inputs(), &outputs);
        assert!(msg.contains("without gaps, found [1, 3]"), "{msg}");

        let mut outputs = good_outputs(3);
        outputs.push(float("logits", &[-1, 2]));
        outputs.push(float("attention_01", &[-1, 1, 5, 5]));
        let msg = problems(&good_inputs(), &outputs);
        assert!(msg.contains("unexpected output `logits`"), "{msg}");
        assert!(msg.contains("unexpected output `attention_01`"), "{msg}");

        let msg = problems(&good_inputs(), &good_outputs(4));
        assert!(msg.contains("4 attention outputs, at most 3"), "{msg}");
    }

    #[test]
    fn refuses_wrong_output_shapes_and_reports_them_all() {
        let mut outputs = good_outputs(2);
        outputs[0].dims = vec![-1, 3];
        outputs[1].dims = vec![-1, 1, 10, 12];
        outputs[2].dims = vec![-1, 10, 10];
        let msg = problems(&good_inputs(), &outputs);
        assert!(
            msg.contains("`probs` has shape [-1, 3], expected [N,2]"),
            "{msg}"
        );
        assert!(msg.contains("`attention_1` is 10x12, not square"), "{msg}");
        assert!(
            msg.contains("`attention_2` has shape [-1, 10, 10], expected [N,1,H,W]"),
            "{msg}"
        );
    }
}
