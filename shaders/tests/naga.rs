//! Every shader parsed and validated by naga (no GPU needed), and the Rust-side tables
//! (workgroup sizes, bindings, uniform layouts, constants) checked against the WGSL.

use msloss_shaders::{
    Binding, CONV_PARAMS_MEMBERS, ConvParams, DIMS_MEMBERS, Dims, Kernel, Length, LossGradSpec, REDUCE_PARAMS_MEMBERS,
    ReduceParams, SAMPLE_PARAMS_MEMBERS, SampleParams,
};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use naga::{AddressSpace, ShaderStage, StorageAccess, TypeInner};

/// loss_grad (every specialisation has the same source).
const LOSS_GRAD: Kernel = Kernel::LossGrad(LossGradSpec { length: Length::L1, volume: false });

fn parse(kernel: Kernel) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = naga::front::wgsl::parse_str(kernel.source())
        .unwrap_or_else(|e| panic!("{}: {}", kernel.name(), e.emit_to_string(kernel.source())));
    let info = Validator::new(ValidationFlags::all(), Capabilities::empty())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}: {}", kernel.name(), e.emit_to_string(kernel.source())));
    (module, info)
}

#[test]
fn every_shader_parses_and_validates() {
    for kernel in Kernel::ALL {
        let (module, _) = parse(kernel);
        assert_eq!(module.entry_points.len(), 1, "{}: one entry point per file", kernel.name());
        let ep = &module.entry_points[0];
        assert_eq!(ep.name, kernel.entry_point(), "{}", kernel.name());
        assert_eq!(ep.stage, ShaderStage::Compute, "{}", kernel.name());
    }
}

#[test]
fn workgroup_sizes_match() {
    for kernel in Kernel::ALL {
        let (module, _) = parse(kernel);
        assert_eq!(module.entry_points[0].workgroup_size, [kernel.workgroup_size(), 1, 1], "{}", kernel.name());
    }
}

#[test]
fn bindings_match() {
    for kernel in Kernel::ALL {
        let (module, _) = parse(kernel);
        let mut found: Vec<(u32, Binding)> = module
            .global_variables
            .iter()
            .filter_map(|(_, var)| {
                let rb = var.binding.as_ref()?;
                assert_eq!(rb.group, 0, "{}: everything lives in group 0", kernel.name());
                let kind = match var.space {
                    AddressSpace::Uniform => Binding::Uniform,
                    AddressSpace::Storage { access } if access.contains(StorageAccess::STORE) => {
                        Binding::StorageReadWrite
                    }
                    AddressSpace::Storage { .. } => Binding::StorageRead,
                    other => panic!("{}: unexpected address space {other:?}", kernel.name()),
                };
                Some((rb.binding, kind))
            })
            .collect();
        found.sort_by_key(|(b, _)| *b);
        // A dynamic offset is the layout's business: in WGSL the binding is a plain uniform.
        let expected: Vec<(u32, Binding)> = kernel
            .bindings()
            .iter()
            .enumerate()
            .map(|(i, b)| (i as u32, if *b == Binding::UniformDynamic { Binding::Uniform } else { *b }))
            .collect();
        assert_eq!(found, expected, "{}: bindings differ from Kernel::bindings", kernel.name());
        assert!(kernel.bindings().len() <= Kernel::MAX_BINDINGS);
    }
}

/// The members' names and byte offsets of a WGSL struct, and its size.
fn struct_layout(module: &naga::Module, name: &str) -> (Vec<(String, u32)>, u32) {
    let (_, ty) = module
        .types
        .iter()
        .find(|(_, t)| t.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("struct {name} not found"));
    match &ty.inner {
        TypeInner::Struct { members, span } => {
            (members.iter().map(|m| (m.name.clone().unwrap_or_default(), m.offset)).collect(), *span)
        }
        other => panic!("{name} is not a struct: {other:?}"),
    }
}

#[test]
fn dims_layout_matches() {
    let (module, _) = parse(LOSS_GRAD);
    let (members, size) = struct_layout(&module, "Dims");
    assert_eq!(size as usize, core::mem::size_of::<Dims>());
    assert_eq!(size as usize, Dims::default().to_bytes().len());
    let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, DIMS_MEMBERS);
    for (i, (_, offset)) in members.iter().enumerate() {
        assert_eq!(*offset as usize, 4 * i, "Dims member {i} is not packed");
    }
    // to_bytes puts each field at its offset.
    let d = Dims { batch: 7, lambda: 2.5, eps: 1e-8, ..Dims::default() };
    let bytes = d.to_bytes();
    assert_eq!(u32::from_ne_bytes(bytes[0..4].try_into().unwrap()), 7);
    assert_eq!(f32::from_bits(u32::from_ne_bytes(bytes[44..48].try_into().unwrap())), 2.5);
    assert_eq!(f32::from_bits(u32::from_ne_bytes(bytes[56..60].try_into().unwrap())), 1e-8);
}

#[test]
fn reduce_params_layout_matches() {
    let (module, _) = parse(Kernel::Reduce);
    let (members, size) = struct_layout(&module, "ReduceParams");
    assert_eq!(size as usize, ReduceParams::default().to_bytes().len());
    for (i, name) in REDUCE_PARAMS_MEMBERS.iter().enumerate() {
        assert_eq!(members[i], (name.to_string(), 4 * i as u32));
    }
}

#[test]
fn conv_params_layout_matches() {
    let (module, _) = parse(Kernel::LocalConv);
    let (members, size) = struct_layout(&module, "ConvParams");
    assert_eq!(size as usize, ConvParams::default().to_bytes().len());
    for (i, name) in CONV_PARAMS_MEMBERS.iter().enumerate() {
        assert_eq!(members[i], (name.to_string(), 4 * i as u32));
    }
}

/// The per-sample block of the three per-sample kernels, and where they bind it.
#[test]
fn sample_params_layout_matches() {
    for kernel in [Kernel::LocalProducts, Kernel::LocalTerms, Kernel::LocalGrad] {
        let (module, _) = parse(kernel);
        let (members, size) = struct_layout(&module, "SampleParams");
        assert_eq!(size as usize, SampleParams::default().to_bytes().len(), "{}", kernel.name());
        for (i, name) in SAMPLE_PARAMS_MEMBERS.iter().enumerate() {
            assert_eq!(members[i], (name.to_string(), 4 * i as u32), "{}", kernel.name());
        }
        assert_eq!(kernel.bindings().last(), Some(&Binding::UniformDynamic), "{}", kernel.name());
    }
    let bytes = SampleParams { index: 7 }.to_bytes();
    assert_eq!(u32::from_ne_bytes(bytes[0..4].try_into().unwrap()), 7);
    // No other kernel takes a dynamic offset.
    for kernel in Kernel::ALL {
        let dynamic = kernel.bindings().iter().filter(|b| **b == Binding::UniformDynamic).count();
        let per_sample = matches!(kernel, Kernel::LocalProducts | Kernel::LocalTerms | Kernel::LocalGrad);
        assert_eq!(dynamic, usize::from(per_sample), "{}", kernel.name());
    }
}

/// The value of a `const NAME: u32 = ...;` in the shared code.
fn wgsl_const(module: &naga::Module, name: &str) -> u32 {
    let (_, c) = module
        .constants
        .iter()
        .find(|(_, c)| c.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("const {name} not found"));
    match module.global_expressions[c.init] {
        naga::Expression::Literal(naga::Literal::U32(v)) => v,
        ref other => panic!("{name} = {other:?} is not a u32 literal"),
    }
}

#[test]
fn constants_match() {
    use msloss_shaders::{PER_INVOCATION, TILE, WORKGROUP_SIZE, flags, length_kind, status};
    let (module, _) = parse(LOSS_GRAD);
    let expected = [
        ("WG", WORKGROUP_SIZE),
        ("TILE", TILE),
        ("PER_INVOCATION", PER_INVOCATION),
        ("FLAG_LOGITS", flags::LOGITS),
        ("FLAG_MASK", flags::MASK),
        ("FLAG_GRAD", flags::GRAD),
        ("FLAG_MEAN", flags::MEAN),
        ("FLAG_LOCAL", flags::LOCAL),
        ("LENGTH_L1", length_kind::L1),
        ("LENGTH_L2", length_kind::L2),
        ("LENGTH_CHARBONNIER", length_kind::CHARBONNIER),
        ("STATUS_SCORES_NONFINITE", status::SCORES_NONFINITE),
        ("STATUS_NEGATIVE_PROBABILITY", status::NEGATIVE_PROBABILITY),
        ("STATUS_IMAGE_NONFINITE", status::IMAGE_NONFINITE),
        ("STATUS_BAD_MASK", status::BAD_MASK),
        ("STATUS_EMPTY_MASK", status::EMPTY_MASK),
        ("STATUS_RESULT_NONFINITE", status::RESULT_NONFINITE),
        ("STATUS_IMAGE_RANGE", status::IMAGE_RANGE),
        ("STATUS_PROBABILITY_RANGE", status::PROBABILITY_RANGE),
        ("STATUS_GRADIENT_NONFINITE", status::GRADIENT_NONFINITE),
    ];
    for (name, value) in expected {
        assert_eq!(wgsl_const(&module, name), value, "const {name}");
    }
}

/// Each kernel's workgroup memory, from naga's layouts, within what the backend asks the device
/// for; the kernels that sum over a workgroup use all of it.
#[test]
fn workgroup_storage_matches() {
    use msloss_shaders::WORKGROUP_STORAGE;
    for kernel in Kernel::ALL {
        let (module, _) = parse(kernel);
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).expect("layout");
        let bytes: u32 = module
            .global_variables
            .iter()
            .filter(|(_, v)| v.space == AddressSpace::WorkGroup)
            .map(|(_, v)| layouter[v.ty].size)
            .sum();
        let sums = matches!(kernel, Kernel::ClassSums | Kernel::Reduce | Kernel::LossGrad(_));
        assert_eq!(bytes, if sums { WORKGROUP_STORAGE } else { 0 }, "{}", kernel.name());
    }
}

#[test]
fn every_source_starts_with_the_shared_code() {
    for kernel in Kernel::ALL {
        assert!(kernel.source().starts_with(msloss_shaders::COMMON), "{}", kernel.name());
    }
    assert_eq!(LOSS_GRAD.storage_buffers(), 8);
}

/// The pipeline constants: every spec of loss_grad gives a value to each override that has no
/// default and names no other; no other kernel declares one (the backend gives them none).
#[test]
fn overrides_match_the_specs() {
    let (module, _) = parse(LOSS_GRAD);
    let declared: Vec<(String, bool)> =
        module.overrides.iter().map(|(_, o)| (o.name.clone().unwrap_or_default(), o.init.is_some())).collect();
    assert!(!declared.is_empty());
    for length in [Length::L1, Length::L2, Length::Charbonnier] {
        for volume in [false, true] {
            let constants = LossGradSpec { length, volume }.constants();
            let given: Vec<&str> = constants.iter().map(|(name, _)| *name).collect();
            for (name, has_default) in &declared {
                assert!(*has_default || given.contains(&name.as_str()), "{name} gets no value");
            }
            for name in given {
                assert!(declared.iter().any(|(d, _)| d == name), "{name} is no override of loss_grad");
            }
        }
    }
    for kernel in Kernel::ALL.into_iter().filter(|k| !matches!(k, Kernel::LossGrad(_))) {
        assert_eq!(parse(kernel).0.overrides.len(), 0, "{}", kernel.name());
    }
}
