//! Staged objects as plain files: `<staging_root>/<bucket>/<key>`, the key's slashes being
//! directories (the layout the local S3 endpoint writes).
//!
//! Bucket and key come from requests, so they are checked before they touch the filesystem:
//! nothing may name a path outside the staging root, neither with `..` or an absolute key nor
//! through a symlink planted inside the root.

use std::path::{Component, Path, PathBuf};

use tern_core::images::{ImagesError, StagedObject};

/// Checks the shape of a bucket and key without touching the filesystem.
pub(crate) fn check_names(obj: &StagedObject) -> Result<(), ImagesError> {
    let refuse = |why: &str| {
        Err(ImagesError::InvalidParameter(format!(
            "refused staged object {obj}: {why}"
        )))
    };
    let b = &obj.bucket;
    if b.is_empty() || b == "." || b == ".." || b.contains(['/', '\\', '\0']) {
        return refuse("the bucket name must be one plain path component");
    }
    let k = &obj.key;
    if k.is_empty() {
        return refuse("the key is empty");
    }
    if k.starts_with('/') || k.contains('\0') {
        return refuse("the key must be a relative path without NUL bytes");
    }
    for part in k.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return refuse("the key has an empty, `.` or `..` path segment");
        }
    }
    // Belt and braces: `split('/')` is not how the OS parses paths on every platform.
    if Path::new(k)
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return refuse("the key does not stay below its bucket");
    }
    Ok(())
}

/// The file holding `obj`, after checking that it exists, is a regular file and resolves
/// (symlinks followed) to a path inside `root`.
pub(crate) fn resolve(root: &Path, obj: &StagedObject) -> Result<PathBuf, ImagesError> {
    check_names(obj)?;
    let path = root.join(&obj.bucket).join(&obj.key);
    let real = match path.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ImagesError::NotFound(format!(
                "staged object {obj} does not exist (no file {})",
                path.display()
            )))
        }
        Err(e) => {
            return Err(ImagesError::internal_from(
                format!("cannot resolve staged object {obj} at {}", path.display()),
                e,
            ))
        }
    };
    let root_real = root.canonicalize().map_err(|e| {
        ImagesError::internal_from(
            format!("cannot resolve the staging root {}", root.display()),
            e,
        )
    })?;
    if !real.starts_with(&root_real) {
        return Err(ImagesError::InvalidParameter(format!(
            "refused staged object {obj}: it resolves to {} outside the staging root {} (symlink)",
            real.display(),
            root_real.display()
        )));
    }
    if !real.is_file() {
        return Err(ImagesError::NotFound(format!(
            "staged object {obj} is not a file ({})",
            real.display()
        )));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(bucket: &str, key: &str) -> StagedObject {
        StagedObject {
            bucket: bucket.into(),
            key: key.into(),
        }
    }

    #[test]
    fn hostile_names_are_refused_before_any_filesystem_access() {
        for (b, k) in [
            ("b", "../x"),
            ("b", "a/../../x"),
            ("b", "/etc/passwd"),
            ("b", "a//b"),
            ("b", "./a"),
            ("b", ""),
            ("b", "a\0b"),
            ("..", "x"),
            ("", "x"),
            ("a/b", "x"),
        ] {
            let err = check_names(&obj(b, k)).expect_err(k);
            assert_eq!(err.error_type(), "Images.InvalidParameter", "{b} {k}");
        }
        check_names(&obj("staging", "jobs/sms-job-1/run/disk0.vmdk")).unwrap();
    }

    #[test]
    fn symlinks_out_of_the_root_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("staging");
        std::fs::create_dir_all(root.join("b")).unwrap();
        std::fs::write(dir.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("b/link")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("b/dir")).unwrap();
        for key in ["link", "dir/secret"] {
            let err = resolve(&root, &obj("b", key)).expect_err(key);
            assert_eq!(err.error_type(), "Images.InvalidParameter");
            assert!(
                err.to_string().contains("outside the staging root"),
                "{err}"
            );
        }
        std::fs::write(root.join("b/ok"), b"x").unwrap();
        assert!(resolve(&root, &obj("b", "ok")).is_ok());
        let missing = resolve(&root, &obj("b", "nope")).unwrap_err();
        assert_eq!(missing.error_type(), "Images.NotFound");
    }
}
