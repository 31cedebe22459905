//! The README's library example, compiled and run.

use msloss::{Backend, Input, Params, Scores, Shape};

#[test]
fn readme_library_example() -> Result<(), msloss::Error> {
    let shape = Shape::new_2d(1, 2, 1, 2, 2)?;
    let logits = [2.0f32, 2.0, -2.0, -2.0, -2.0, -2.0, 2.0, 2.0];
    let image = [0.1f32, 0.1, 0.9, 0.9];
    let input = Input::new(shape, Scores::Logits(&logits), &image, None)?;
    let backend = msloss::cpu::CpuBackend::new();
    let mut ws = backend.workspace();
    let mut grad = [0.0f32; 8];
    let e = backend.energy_and_grad(&input, &Params::default(), &mut grad, &mut ws)?;
    assert!(e.total > 0.0 && e.length > 0.0);
    Ok(())
}
