//! Build script: runs the kernel generator (dsv3-codegen) and, per enabled backend feature,
//! compiles every kernel family for every target architecture and embeds the results.
//!
//! - Always: `OUT_DIR/kernels/{cuda,hip}/<family>.{cu,hip}` (+ self-contained `.rtc.` copies)
//!   and `OUT_DIR/dsv3_kernels.rs` (registry + typed launch wrappers, `include!`d by the crate).
//! - Feature `cuda`: with nvcc (env `NVCC`, else PATH, else /usr/local/cuda/bin) compiles, for
//!   each arch of `DSV3_CUDA_ARCHS` (default `sm_80,sm_89,sm_90a`), PTX (`nvcc -ptx`) and SASS
//!   (`ptxas`), and links them into one fatbin per family (`fatbinary`); the PTX of non
//!   arch-specific targets (compute_80, compute_89) is embedded too so newer GPUs can JIT it.
//!   Without nvcc the generated sources are embedded and NVRTC compiles them at run time.
//! - Feature `hip`: code objects per arch of `DSV3_HIP_ARCHS` (default gfx90a, plus gfx942 when a
//!   clang that targets it is found). ROCm 5.2's hipcc (LLVM 15) cannot target gfx942; clang-19
//!   (`DSV3_HIP_CLANG`, else `clang++-19` on PATH) can, with Debian's ROCm 5.2 device libraries
//!   plus a generated `oclc_isa_version_942.bc`.
//! - A compile error in any variant fails the build with the compiler's message.
//! - `OUT_DIR/kernels.txt` lists every kernel × vendor × arch × image kind compiled.
//! - `DSV3_PTXAS_VERBOSE=1` passes `-v` to ptxas (registers, spills) and prints it as warnings.

use dsv3_codegen::rust::{Artifacts, Image, ImageKind};
use dsv3_codegen::{Instance, TranslationUnit, Vendor};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

type Job<'a, T> = Box<dyn FnOnce() -> T + Send + 'a>;
/// (family, arch, ptx, cubin) of one CUDA compile.
type CudaPart = (String, String, PathBuf, PathBuf);

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let kernels = root.join("kernels");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    for v in [
        "NVCC",
        "HIPCC",
        "DSV3_CUDA_ARCHS",
        "DSV3_HIP_ARCHS",
        "DSV3_HIP_CLANG",
        "DSV3_ROCM_DEVICE_LIBS",
        "DSV3_PTXAS_VERBOSE",
        "PATH",
    ] {
        println!("cargo:rerun-if-env-changed={v}");
    }

    let (instances, tus) = dsv3_codegen::write_translation_units(&out.join("kernels"), &kernels)
        .unwrap_or_else(|e| panic!("dsv3 kernel generator: {e}"));

    let mut art = Artifacts::default();
    let mut report: Vec<String> = Vec::new();
    let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);

    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        for tu in tus.iter().filter(|t| t.vendor == Vendor::Cuda) {
            art.sources.push((tu.family.to_string(), Vendor::Cuda, tu.amalgamated.clone()));
        }
        match find_tool("NVCC", &["nvcc"], &["/usr/local/cuda/bin/nvcc"]) {
            Some(nvcc) => {
                let archs = list_env("DSV3_CUDA_ARCHS", "sm_80,sm_89,sm_90a");
                for a in &archs {
                    if !a.starts_with("sm_") {
                        panic!("DSV3_CUDA_ARCHS: `{a}` is not an sm_XX target");
                    }
                }
                let images = compile_cuda(&nvcc, &kernels, &out, &tus, &archs, jobs);
                report.extend(report_lines(&instances, &images));
                art.images.extend(images);
            }
            None => {
                println!(
                    "cargo:warning=dsv3: nvcc not found (set NVCC): CUDA kernels will be compiled by NVRTC at run time"
                );
                report.push("cuda: no nvcc at build time; NVRTC compiles at run time".into());
            }
        }
    }

    if std::env::var_os("CARGO_FEATURE_HIP").is_some() {
        for tu in tus.iter().filter(|t| t.vendor == Vendor::Hip) {
            art.sources.push((tu.family.to_string(), Vendor::Hip, tu.amalgamated.clone()));
        }
        let hipcc = find_tool("HIPCC", &["hipcc"], &["/opt/rocm/bin/hipcc"]);
        let clang = find_tool("DSV3_HIP_CLANG", &["clang++-19", "clang++-18", "clang++-17"], &[]);
        let default_archs = if clang.is_some() { "gfx90a,gfx942" } else { "gfx90a" };
        let explicit = std::env::var("DSV3_HIP_ARCHS").is_ok();
        let archs = list_env("DSV3_HIP_ARCHS", default_archs);
        if !explicit && clang.is_none() {
            println!("cargo:warning=dsv3: no clang++-19 (or DSV3_HIP_CLANG) found: gfx942 code objects are not built");
        }
        if hipcc.is_none() && clang.is_none() {
            println!("cargo:warning=dsv3: hipcc not found (set HIPCC): no HIP code objects embedded");
            report.push("hip: no hipcc at build time; no code objects".into());
        } else {
            let images = compile_hip(hipcc.as_deref(), clang.as_deref(), &kernels, &out, &tus, &archs, jobs);
            report.extend(report_lines(&instances, &images));
            art.images.extend(images);
        }
    }

    let registry = dsv3_codegen::rust::emit_registry(dsv3_codegen::FAMILIES, &instances, &art);
    dsv3_codegen::write_if_changed(&out.join("dsv3_kernels.rs"), &registry).unwrap();
    let mut txt = String::from("# kernel vendor arch image\n");
    for l in &report {
        txt.push_str(l);
        txt.push('\n');
    }
    dsv3_codegen::write_if_changed(&out.join("kernels.txt"), &txt).unwrap();
    let n_images = art.images.len();
    println!(
        "cargo:warning=dsv3: {} kernels in {} families; {} images embedded; list: {}",
        instances.len(),
        dsv3_codegen::FAMILIES.len(),
        n_images,
        out.join("kernels.txt").display()
    );
}

/// `kernel vendor arch kind` for every instance in every compiled image.
fn report_lines(instances: &[Instance], images: &[Image]) -> Vec<String> {
    let mut out = Vec::new();
    for im in images.iter().filter(|i| i.kind != ImageKind::Fatbin) {
        for inst in instances.iter().filter(|i| i.family == im.family && i.spec.archs.has_vendor(im.vendor)) {
            out.push(format!("{} {} {} {}", inst.name, im.vendor, im.arch, im.kind.name()));
        }
    }
    out
}

fn list_env(var: &str, default: &str) -> Vec<String> {
    std::env::var(var)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// env var, then PATH, then fixed fallbacks.
fn find_tool(env: &str, names: &[&str], fallbacks: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
        if let Some(found) = which(p.to_str().unwrap_or("")) {
            return Some(found);
        }
        panic!("{env}={} does not name an executable", p.display());
    }
    names.iter().find_map(|n| which(n)).or_else(|| fallbacks.iter().map(PathBuf::from).find(|p| p.is_file()))
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(format!("{what} failed ({}):\n{:?}\n{text}", out.status, cmd));
    }
    Ok(text)
}

/// Runs `jobs` closures on `n` threads; returns every result in order.
fn parallel<T: Send>(n: usize, work: Vec<Job<'_, T>>) -> Vec<T> {
    let queue = Mutex::new(work.into_iter().enumerate().collect::<Vec<_>>());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..n.max(1) {
            s.spawn(|| loop {
                let job = queue.lock().unwrap().pop();
                match job {
                    Some((i, f)) => {
                        let r = f();
                        results.lock().unwrap().push((i, r));
                    }
                    None => break,
                }
            });
        }
    });
    let mut r = results.into_inner().unwrap();
    r.sort_by_key(|(i, _)| *i);
    r.into_iter().map(|(_, x)| x).collect()
}

fn fail_on_errors(errors: Vec<String>) {
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("{e}");
        }
        panic!("dsv3: {} kernel variant(s) failed to compile:\n{}", errors.len(), errors.join("\n\n"));
    }
}

fn compile_cuda(nvcc: &Path, kernels: &Path, out: &Path, tus: &[TranslationUnit], archs: &[String], jobs: usize) -> Vec<Image> {
    let bin = nvcc.parent().unwrap_or(Path::new("."));
    let ptxas = bin.join("ptxas");
    let fatbinary = bin.join("fatbinary");
    let verbose = std::env::var("DSV3_PTXAS_VERBOSE").map(|v| v == "1").unwrap_or(false);
    let dir = out.join("kernels/cuda");
    let cuda_tus: Vec<&TranslationUnit> = tus.iter().filter(|t| t.vendor == Vendor::Cuda).collect();

    // One job per (family, arch): nvcc -ptx for the virtual arch, then ptxas for the real one.
    let mut work: Vec<Job<'_, Result<CudaPart, String>>> = Vec::new();
    for tu in &cuda_tus {
        for arch in archs {
            let (tu, arch, dir) = (*tu, arch.clone(), dir.clone());
            let (ptxas, nvcc) = (ptxas.clone(), nvcc.to_path_buf());
            work.push(Box::new(move || {
                let num = &arch[3..];
                let ptx = dir.join(format!("{}.compute_{num}.ptx", tu.family));
                let cubin = dir.join(format!("{}.{arch}.cubin", tu.family));
                run(
                    Command::new(&nvcc)
                        .args(["-ptx", "-std=c++17", "-O3", "-lineinfo"])
                        .arg(format!("-arch=compute_{num}"))
                        .arg("-I")
                        .arg(kernels.join("include"))
                        .arg("-I")
                        .arg(kernels)
                        .arg(&tu.path)
                        .arg("-o")
                        .arg(&ptx),
                    &format!("nvcc {} compute_{num}", tu.family),
                )?;
                let mut c = Command::new(&ptxas);
                c.args(["-O3", &format!("-arch={arch}")]).arg(&ptx).arg("-o").arg(&cubin);
                if verbose {
                    c.arg("-v");
                }
                let log = run(&mut c, &format!("ptxas {} {arch}", tu.family))?;
                if verbose {
                    for l in log.lines() {
                        println!("cargo:warning=ptxas {} {arch}: {l}", tu.family);
                    }
                }
                Ok((tu.family.to_string(), arch, ptx, cubin))
            }));
        }
    }
    let results = parallel(jobs, work);
    let mut errors = Vec::new();
    let mut images = Vec::new();
    #[allow(clippy::type_complexity)]
    let mut per_family: Vec<(String, Vec<(String, PathBuf, PathBuf)>)> = Vec::new();
    for r in results {
        match r {
            Ok((fam, arch, ptx, cubin)) => {
                images.push(Image { family: fam.clone(), vendor: Vendor::Cuda, arch: arch.clone(), kind: ImageKind::Cubin, path: cubin.clone() });
                if !arch.ends_with('a') {
                    // Non arch-specific PTX runs (JIT) on any later GPU.
                    images.push(Image { family: fam.clone(), vendor: Vendor::Cuda, arch: format!("compute_{}", &arch[3..]), kind: ImageKind::Ptx, path: ptx.clone() });
                }
                match per_family.iter_mut().find(|(f, _)| *f == fam) {
                    Some((_, v)) => v.push((arch, ptx, cubin)),
                    None => per_family.push((fam, vec![(arch, ptx, cubin)])),
                }
            }
            Err(e) => errors.push(e),
        }
    }
    fail_on_errors(errors);
    let mut errors = Vec::new();
    for (fam, parts) in &per_family {
        let fatbin = dir.join(format!("{fam}.fatbin"));
        let mut c = Command::new(&fatbinary);
        c.arg(format!("--create={}", fatbin.display())).arg("-64");
        for (arch, ptx, cubin) in parts {
            let sm = &arch[3..];
            c.arg(format!("--image3=kind=elf,sm={sm},file={}", cubin.display()));
            if !arch.ends_with('a') {
                c.arg(format!("--image3=kind=ptx,sm={sm},file={}", ptx.display()));
            }
        }
        match run(&mut c, &format!("fatbinary {fam}")) {
            Ok(_) => images.push(Image { family: fam.clone(), vendor: Vendor::Cuda, arch: "all".into(), kind: ImageKind::Fatbin, path: fatbin }),
            Err(e) => errors.push(e),
        }
    }
    fail_on_errors(errors);
    images
}

/// Which compiler builds `arch`: ROCm 5.2's hipcc (LLVM 15) knows gfx90a/gfx940 but not gfx942.
fn hipcc_knows(arch: &str) -> bool {
    !matches!(arch, "gfx942" | "gfx950" | "gfx1200" | "gfx1201")
}

/// A device-library directory for clang: the system's ROCm bitcode plus an
/// `oclc_isa_version_942.bc` derived from the gfx940 one (same code, ISA version 9402).
fn device_libs_for_clang(clang: &Path, out: &Path) -> Result<PathBuf, String> {
    let sys = std::env::var_os("DSV3_ROCM_DEVICE_LIBS").map(PathBuf::from).unwrap_or_else(|| {
        ["/usr/lib/x86_64-linux-gnu/amdgcn/bitcode", "/opt/rocm/amdgcn/bitcode", "/usr/lib/amdgcn/bitcode"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.join("ocml.bc").is_file())
            .unwrap_or_else(|| PathBuf::from("/usr/lib/x86_64-linux-gnu/amdgcn/bitcode"))
    });
    let dir = out.join("amdgcn-bitcode");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let entries = std::fs::read_dir(&sys).map_err(|e| format!("ROCm device libs {}: {e} (set DSV3_ROCM_DEVICE_LIBS)", sys.display()))?;
    for e in entries.flatten() {
        let dst = dir.join(e.file_name());
        if !dst.exists() {
            std::os::unix::fs::symlink(e.path(), &dst).map_err(|e| e.to_string())?;
        }
    }
    let isa = dir.join("oclc_isa_version_942.bc");
    if !isa.exists() {
        let suffix = clang.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("clang++")).unwrap_or("");
        let bindir = clang.parent().unwrap_or(Path::new("/usr/bin"));
        let dis = bindir.join(format!("llvm-dis{suffix}"));
        let asm = bindir.join(format!("llvm-as{suffix}"));
        let text = run(Command::new(&dis).arg(sys.join("oclc_isa_version_940.bc")).arg("-o").arg("-"), "llvm-dis oclc_isa_version_940.bc")?;
        if !text.contains("i32 9400") {
            return Err("oclc_isa_version_940.bc does not hold ISA version 9400".into());
        }
        let ll = dir.join("oclc_isa_version_942.ll");
        std::fs::write(&ll, text.replace("i32 9400", "i32 9402")).map_err(|e| e.to_string())?;
        run(Command::new(&asm).arg(&ll).arg("-o").arg(&isa), "llvm-as oclc_isa_version_942.ll")?;
    }
    Ok(dir)
}

fn compile_hip(
    hipcc: Option<&Path>,
    clang: Option<&Path>,
    kernels: &Path,
    out: &Path,
    tus: &[TranslationUnit],
    archs: &[String],
    jobs: usize,
) -> Vec<Image> {
    let dir = out.join("kernels/hip");
    let needs_clang = archs.iter().any(|a| !hipcc_knows(a)) || hipcc.is_none();
    let libs = if needs_clang {
        let c = clang.unwrap_or_else(|| panic!("dsv3: DSV3_HIP_ARCHS {archs:?} needs clang++-19 (or DSV3_HIP_CLANG); ROCm 5.2's hipcc cannot target it"));
        Some(device_libs_for_clang(c, out).unwrap_or_else(|e| panic!("dsv3: preparing device libraries for clang: {e}")))
    } else {
        None
    };
    let mut work: Vec<Job<'_, Result<Image, String>>> = Vec::new();
    for tu in tus.iter().filter(|t| t.vendor == Vendor::Hip) {
        for arch in archs {
            let (arch, dir, libs) = (arch.clone(), dir.clone(), libs.clone());
            work.push(Box::new(move || {
                let co = dir.join(format!("{}.{arch}.co", tu.family));
                let use_hipcc = hipcc.is_some() && hipcc_knows(&arch);
                let mut c;
                if use_hipcc {
                    c = Command::new(hipcc.unwrap());
                    c.args(["--genco", "--no-gpu-bundle-output", "-O3", "-std=c++17"]);
                } else {
                    c = Command::new(clang.unwrap());
                    c.args(["-x", "hip", "--cuda-device-only", "--no-gpu-bundle-output", "-O3", "-std=c++17", "--rocm-path=/usr"]);
                    c.arg(format!("--rocm-device-lib-path={}", libs.as_ref().unwrap().display()));
                }
                c.arg(format!("--offload-arch={arch}"))
                    .arg("-I")
                    .arg(kernels.join("include"))
                    .arg("-I")
                    .arg(kernels)
                    .arg(&tu.path)
                    .arg("-o")
                    .arg(&co);
                let what = format!("{} {} {arch}", if use_hipcc { "hipcc" } else { "clang" }, tu.family);
                run(&mut c, &what)?;
                Ok(Image { family: tu.family.to_string(), vendor: Vendor::Hip, arch, kind: ImageKind::CodeObject, path: co })
            }));
        }
    }
    let mut images = Vec::new();
    let mut errors = Vec::new();
    for r in parallel(jobs, work) {
        match r {
            Ok(i) => images.push(i),
            Err(e) => errors.push(e),
        }
    }
    fail_on_errors(errors);
    images
}
