//! [`LocalStore`]: a directory as an object store. Keys are paths below the root; a key
//! that would leave it is refused. Every object is written under a temporary name, created
//! exclusively (never through a symlink) with a random suffix, and renamed into place when
//! complete, so it appears whole or not at all, a crash included: its bytes are flushed
//! to disk before the rename, by one `syncfs` shared by every write in flight
//! ([`flush`]), unless [`Durability::Process`] trades the machine's crash for speed.
//! Files are `0600` and directories `0700` unless configured otherwise.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use md5::{Digest, Md5};

mod flush;
mod list;

use std::sync::Arc;

use self::flush::Flushers;
use self::list::{find_temp_files, Walker};
use crate::error::{ErrorKind, StoreError};
use crate::key::local_path_problem;
use crate::stop::{self, Phase};
use crate::{
    etag_md5, multipart_etag, Body, CompletedPart, Condition, EntryStream, GetOptions, GetResult,
    ObjectInfo, ObjectMeta, ObjectStore, PageStream, PartData, PendingUpload, PutOptions,
    PutResult, StoreTraits, Stored, Upload,
};

/// What temporary files are called: `.<name>.egress-tmp-<random>`.
const TEMP_MARK: &str = ".egress-tmp-";
/// Temporary files of earlier versions (`.<name>.partial-<pid>`), also never listed.
const OLD_TEMP_MARK: &str = ".partial-";
/// Entries per listing page.
const PAGE: usize = 1000;
/// Read size when streaming a file.
const READ_CHUNK: usize = 256 * 1024;

/// When a new object's bytes must be on disk, relative to its name appearing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// Each object's bytes are flushed before it is named: whole or absent even after a
    /// machine crash or power loss.
    #[default]
    Machine,
    /// Objects are named as soon as they are written: whole or absent when the process is
    /// killed or fails (what rclone guarantees); a machine crash mid-run may leave the newest
    /// names empty or short, which the next run copies again. [`ObjectStore::persist`]
    /// still flushes everything, so a run that succeeds is on disk.
    Process,
}

/// How a [`LocalStore`] writes: file permissions and durability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalOptions {
    /// Permission bits of new files (directories get search where reading is allowed).
    pub file_mode: u32,
    /// When bytes must be on disk.
    pub durability: Durability,
}

impl Default for LocalOptions {
    fn default() -> LocalOptions {
        LocalOptions {
            file_mode: 0o600,
            durability: Durability::Machine,
        }
    }
}

/// A directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    file_mode: u32,
    dir_mode: u32,
    durability: Durability,
    flushers: Arc<Flushers>,
}

impl LocalStore {
    /// A store rooted at `root`, writing files `0600` and directories `0700`.
    pub fn new(root: impl Into<PathBuf>) -> LocalStore {
        LocalStore::with_options(root, LocalOptions::default())
    }

    /// A store whose files get `options.file_mode`; directories get the same bits plus
    /// search (`x`) wherever reading is allowed.
    pub fn with_options(root: impl Into<PathBuf>, options: LocalOptions) -> LocalStore {
        let file_mode = options.file_mode & 0o777;
        let search = (file_mode & 0o444) >> 2;
        LocalStore {
            root: root.into(),
            file_mode,
            dir_mode: file_mode | search | 0o700,
            durability: options.durability,
            flushers: Arc::default(),
        }
    }

    /// Wait until `file`'s bytes are on disk, where the durability asks for it before
    /// the file is named.
    async fn flush_before_naming(&self, file: Arc<File>) -> Result<(), StoreError> {
        match self.durability {
            Durability::Machine => self.flushers.flush(file).await,
            // Measured: 300,000 files of 1 KiB took 47 s waiting for these flushes where
            // rclone, which flushes nothing, took 41 s (docs/performance.md).
            Durability::Process => Ok(()),
        }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        match local_path_problem(key) {
            Some(problem) => Err(StoreError::new(
                ErrorKind::InvalidKey,
                format!(
                    "key '{}' cannot be written under {}: it {problem}",
                    key.escape_debug(),
                    self.root.display()
                ),
            )),
            None => Ok(self.root.join(key)),
        }
    }

    /// Create the directories from the root down to `dir` (each `dir_mode`), refusing a
    /// symlink on the way: nothing may be written outside the root.
    fn ensure_dir(&self, dir: &Path) -> Result<(), StoreError> {
        let rel = dir.strip_prefix(&self.root).unwrap_or(Path::new(""));
        if !self.root.is_dir() {
            // The root and its parents, as `mkdir -p` would make them.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(self.dir_mode)
                .create(&self.root)
                .map_err(|e| StoreError::io("creating directory", &self.root, &e))?;
        }
        create_dir(&self.root, self.dir_mode)?;
        let mut current = self.root.clone();
        for part in rel.components() {
            current.push(part);
            // A file where a folder must go, below the root, is another key's: this key
            // cannot be written beside it (`d/a` and `d/a/b`), the others can.
            if current.is_file() && !current.is_symlink() {
                return Err(key_conflict(&self.root, &current, "is a file"));
            }
            create_dir(&current, self.dir_mode)?;
        }
        Ok(())
    }

    /// Refuse to name a file where a folder of other keys is (`d/a` beside `d/a/b`).
    fn no_folder_at(&self, path: &Path) -> Result<(), StoreError> {
        match path.is_dir() && !path.is_symlink() {
            true => Err(key_conflict(&self.root, path, "is a folder of other keys")),
            false => Ok(()),
        }
    }

    /// A new, empty temporary file next to `path`.
    fn create_temp(&self, path: &Path) -> Result<(PathBuf, File), StoreError> {
        self.ensure_dir(path.parent().unwrap_or(&self.root))?;
        self.create_named(path)
    }

    /// A new, empty file for `path`'s bytes: unnamed where the filesystem allows (see
    /// [`Staged`]), else under a temporary name.
    fn create_staged(&self, path: &Path) -> Result<(Staged, File), StoreError> {
        let parent = path.parent().unwrap_or(&self.root);
        self.ensure_dir(parent)?;
        if unnamed_files_can_be_linked() {
            let unnamed = OpenOptions::new()
                .write(true)
                .mode(self.file_mode)
                .custom_flags(libc::O_TMPFILE | libc::O_NOFOLLOW)
                .open(parent);
            match unnamed {
                Ok(file) => return Ok((Staged::Unnamed, file)),
                // No unnamed files on this filesystem (EISDIR from kernels before 3.11).
                Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {}
                Err(e) => return Err(StoreError::io("creating a file in", parent, &e)),
            }
        }
        let (temp, file) = self.create_named(path)?;
        let ticket = LocalStore::register_temp(&temp);
        Ok((Staged::Named { temp, ticket }, file))
    }

    fn create_named(&self, path: &Path) -> Result<(PathBuf, File), StoreError> {
        let temp = temp_name(path);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(self.file_mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)
            .map_err(|e| StoreError::io("creating", &temp, &e))?;
        Ok((temp, file))
    }

    fn register_temp(temp: &Path) -> stop::Ticket {
        let temp = temp.to_path_buf();
        stop::register(
            Phase::Known,
            Box::new(move || Box::pin(async move { std::fs::remove_file(temp).is_ok() })),
        )
    }
}

/// Where a new object's bytes wait for their name. An unnamed file (`O_TMPFILE`) is linked
/// into place whole: one change to its directory instead of a create and a rename (the
/// directory's lock, taken by both, was the cold copy's largest cost in perf), and a crash
/// leaves nothing behind. Where the filesystem has no unnamed files, a hidden temporary
/// name is renamed into place.
enum Staged {
    Unnamed,
    Named { temp: PathBuf, ticket: stop::Ticket },
}

impl Staged {
    fn temp(&self) -> Option<PathBuf> {
        match self {
            Staged::Named { temp, .. } => Some(temp.clone()),
            Staged::Unnamed => None,
        }
    }
}

/// `.<name>.egress-tmp-<random>` next to `path`.
fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let parent = path.parent().unwrap_or(Path::new(""));
    parent.join(format!(".{name}{TEMP_MARK}{:016x}", rand::random::<u64>()))
}

/// An unnamed file is named through `/proc/self/fd` (`linkat` by descriptor alone needs a
/// privilege): without `/proc`, temporary names are used.
fn unnamed_files_can_be_linked() -> bool {
    static PROC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PROC.get_or_init(|| Path::new("/proc/self/fd").is_dir())
}

/// Give `file` (unnamed) the name `path`.
fn link_unnamed(file: &File, path: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let invalid = |e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let from =
        std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(invalid)?;
    let to = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(invalid)?;
    // SAFETY: both are valid NUL-terminated paths that linkat only reads.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Move a flushed file into place (see [`place`]): from its temporary name, or (`None`)
/// unnamed.
fn place_staged(
    file: &File,
    temp: Option<&Path>,
    path: &Path,
    no_replace: bool,
) -> Result<(), StoreError> {
    let temp = match temp {
        Some(temp) => return place(temp, path, no_replace),
        None => match link_unnamed(file, path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && no_replace => {
                return Err(StoreError::new(
                    ErrorKind::PreconditionFailed,
                    format!("{} already exists", path.display()),
                ))
            }
            // A name to replace: linked under a temporary name, then renamed over it.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let temp = temp_name(path);
                link_unnamed(file, &temp)
                    .map_err(|e| StoreError::io("moving into place", path, &e))?;
                temp
            }
            Err(e) => return Err(StoreError::io("moving into place", path, &e)),
        },
    };
    place(&temp, path, false).inspect_err(|_| {
        let _ = std::fs::remove_file(&temp);
    })
}

/// Two keys that one directory cannot hold: `at` (below `root`) is already the other kind
/// of thing. Failed one by one (the other keys are written), never the whole output.
fn key_conflict(root: &Path, at: &Path, what: &str) -> StoreError {
    let name = at.strip_prefix(root).unwrap_or(at).display();
    StoreError::new(
        ErrorKind::InvalidKey,
        format!(
            "'{name}' under {} {what}: a directory cannot hold both a key and keys below it of the same name (as S3 can); this key is not written",
            root.display()
        ),
    )
}

fn create_dir(dir: &Path, mode: u32) -> Result<(), StoreError> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(m) if m.file_type().is_symlink() => Err(StoreError::new(
            ErrorKind::NotWritable,
            format!(
                "{} is a symbolic link; refusing to write through it",
                dir.display()
            ),
        )),
        Ok(_) => Err(StoreError::new(
            ErrorKind::NotWritable,
            format!(
                "{} is a file, not a directory; choose another output",
                dir.display()
            ),
        )),
        Err(_) => match std::fs::DirBuilder::new().mode(mode).create(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
            Err(e) => Err(StoreError::io("creating directory", dir, &e)),
        },
    }
}

/// Blocking file operations at once, in the whole process. Each small operation is a
/// hand-off to a blocking thread; with one per job (64) a cold copy of 10,000 1 KiB
/// files took 6.5 s, most of it in futex wake-ups and context switches, and 3.7 s with 8.
static FILE_WORK: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(FILE_WORK_SLOTS);
const FILE_WORK_SLOTS: usize = 8;

/// Run blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let _slot = FILE_WORK
        .acquire()
        .await
        .map_err(|_| StoreError::new(ErrorKind::Other, "file work stopped"))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::new(ErrorKind::Other, format!("file task failed: {e}")))?
}

/// Stream `body` into `file` at `offset`, returning the MD5 of what was written.
async fn write_body(
    file: File,
    path: PathBuf,
    offset: u64,
    body: Body,
) -> Result<(File, [u8; 16]), StoreError> {
    let mut stream = body.into_stream();
    let mut state = (file, Md5::new(), offset);
    while let Some(chunk) = stream.next().await {
        let chunk: Bytes = chunk?;
        let path = path.clone();
        state = blocking(move || {
            let (file, mut md5, offset) = state;
            md5.update(&chunk);
            file.write_all_at(&chunk, offset)
                .map_err(|e| StoreError::io("writing", &path, &e))?;
            Ok((file, md5, offset + chunk.len() as u64))
        })
        .await?;
    }
    Ok((state.0, state.1.finalize().into()))
}

/// Give the file its Last-Modified.
fn stamp(file: &File, temp: &Path, modified: Option<i64>) -> Result<(), StoreError> {
    if let Some(secs) = modified {
        let when = UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
        file.set_modified(when)
            .map_err(|e| StoreError::io("setting the time of", temp, &e))?;
    }
    Ok(())
}

/// Move a flushed file into place. The rename itself reaches the disk with the next
/// flush (or [`ObjectStore::persist`]): a crash before that leaves no object, never a
/// partial one.
fn place(temp: &Path, path: &Path, no_replace: bool) -> Result<(), StoreError> {
    if no_replace {
        // link() fails if the name exists: an atomic "create if absent".
        std::fs::hard_link(temp, path).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => StoreError::new(
                ErrorKind::PreconditionFailed,
                format!("{} already exists", path.display()),
            ),
            _ => StoreError::io("moving into place", path, &e),
        })?;
        let _ = std::fs::remove_file(temp);
        Ok(())
    } else {
        std::fs::rename(temp, path).map_err(|e| StoreError::io("moving into place", path, &e))
    }
}

fn file_md5(path: &Path) -> Option<[u8; 16]> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let mut md5 = Md5::new();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            return Some(md5.finalize().into());
        }
        md5.update(&buf[..n]);
    }
}

fn meta_of(m: &std::fs::Metadata) -> ObjectMeta {
    ObjectMeta {
        size: m.len(),
        modified: m.mtime(),
        ..Default::default()
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    fn describe(&self, key: &str) -> String {
        self.root.join(key).display().to_string()
    }

    fn traits(&self) -> StoreTraits {
        StoreTraits {
            keeps_modified: true,
            keeps_metadata: false,
        }
    }

    fn now(&self) -> i64 {
        // Files' times are this host's (a shared file system's server stamps them too, but
        // within the skew NFS already requires).
        chrono::Utc::now().timestamp()
    }

    async fn probe(&self, write: bool) -> Result<(), StoreError> {
        let store = self.clone();
        blocking(move || {
            if write {
                let (temp, _file) = store.create_temp(&store.root.join("probe"))?;
                let _ = std::fs::remove_file(temp);
                return Ok(());
            }
            match std::fs::metadata(&store.root) {
                Ok(m) if m.is_dir() => Ok(()),
                _ => Err(StoreError::new(
                    ErrorKind::BucketNotFound,
                    format!(
                        "local directory {} does not exist: create it or fix the path",
                        store.root.display()
                    ),
                )),
            }
        })
        .await
    }

    fn list(&self, under: &str) -> PageStream {
        let walker = Walker::new(self.root.clone(), under);
        futures::stream::unfold(Some(walker), |state| async move {
            let walker = state?;
            let result = tokio::task::spawn_blocking(move || {
                let mut walker = walker;
                let page = walker.next_page(PAGE);
                (walker, page)
            })
            .await;
            match result {
                Ok((_, Ok(page))) if page.is_empty() => None,
                Ok((walker, Ok(page))) => Some((Ok(page), Some(walker))),
                Ok((_, Err(e))) => Some((Err(e), None)),
                Err(e) => Some((
                    Err(StoreError::new(
                        ErrorKind::Other,
                        format!("listing task failed: {e}"),
                    )),
                    None,
                )),
            }
        })
        .boxed()
    }

    fn list_folder(&self, under: &str) -> EntryStream {
        let (root, under) = (self.root.clone(), under.to_string());
        let entries = async move { blocking(move || list::folder(&root, &under)).await };
        crate::walk::in_pages(entries, PAGE)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let path = self.path(key)?;
        blocking(move || match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => Ok(meta_of(&m)),
            Ok(_) => Err(StoreError::new(
                ErrorKind::NotFound,
                format!("{} is not a regular file", path.display()),
            )),
            Err(e) => Err(StoreError::io("reading", &path, &e)),
        })
        .await
    }

    async fn part_size(&self, _key: &str, _number: u32) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    async fn get(&self, key: &str, options: GetOptions) -> Result<GetResult, StoreError> {
        if options.part_number.is_some() {
            return Err(StoreError::new(
                ErrorKind::Unsupported,
                "a local directory has no multipart parts",
            ));
        }
        let path = self.path(key)?;
        let opened = path.clone();
        let span = move |size: u64| {
            let (offset, len) = options.range.unwrap_or((0, size));
            (offset, len.min(size.saturating_sub(offset)))
        };
        // A small read is done with the open: one hand-off to a blocking thread per object
        // (a cold copy of 300,000 1 KiB files spent most of its time switching threads).
        let (file, meta, small) = blocking(move || {
            let file = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&opened)
                .map_err(|e| StoreError::io("reading", &opened, &e))?;
            let m = file
                .metadata()
                .map_err(|e| StoreError::io("reading", &opened, &e))?;
            let (offset, len) = span(m.len());
            let small = match len <= READ_CHUNK as u64 {
                true => {
                    let mut buf = vec![0; len as usize];
                    file.read_exact_at(&mut buf, offset)
                        .map_err(|e| StoreError::io("reading", &opened, &e))?;
                    Some(Bytes::from(buf))
                }
                false => None,
            };
            Ok((file, meta_of(&m), small))
        })
        .await?;
        let (offset, len) = span(meta.size);
        let body = match small {
            Some(bytes) => Body::from_bytes(bytes),
            None => Body::from_stream(len, read_stream(file, path, offset, len)),
        };
        Ok(GetResult { meta, offset, body })
    }

    async fn put(&self, key: &str, body: Body, options: &PutOptions) -> Stored {
        let path = self.path(key)?;
        self.no_folder_at(&path)?;
        let (staged, file, md5) = self.write_staged(&path, body).await?;
        let (result, staged) = self.put_staged(file, staged, &path, md5, options).await;
        discard(staged, result.is_err());
        result
    }

    async fn create_multipart(
        &self,
        key: &str,
        options: &PutOptions,
    ) -> Result<Upload, StoreError> {
        let path = self.path(key)?;
        self.no_folder_at(&path)?;
        let store = self.clone();
        let (temp, _file) = blocking(move || store.create_temp(&path)).await?;
        let ticket = LocalStore::register_temp(&temp);
        let id = temp.to_string_lossy().into_owned();
        Ok(Upload::new(key, id, options, ticket))
    }

    async fn upload_part(&self, upload: &Upload, part: PartData) -> Result<String, StoreError> {
        let slot = part.slot;
        let temp = PathBuf::from(&upload.id);
        let opened = temp.clone();
        let file = blocking(move || {
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&opened)
                .map_err(|e| StoreError::io("writing", &opened, &e))
        })
        .await?;
        let (_, md5) = write_body(file, temp, slot.offset, part.body).await?;
        if part.content_md5.is_some_and(|expected| expected != md5) {
            return Err(StoreError::new(
                ErrorKind::ChecksumMismatch,
                format!(
                    "part {} of {}: Content-MD5 does not match the bytes",
                    slot.number, upload.key
                ),
            ));
        }
        Ok(hex::encode(md5))
    }

    async fn complete(&self, upload: Upload, parts: &[CompletedPart], size: u64) -> Stored {
        let path = self.path(&upload.key)?;
        let temp = PathBuf::from(&upload.id);
        let modified = upload.modified;
        let create_only = upload.condition == Condition::IfAbsent;
        let md5s: Option<Vec<[u8; 16]>> = parts.iter().map(|p| etag_md5(&p.etag)).collect();
        let opened = temp.clone();
        let file = blocking(move || {
            let file = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&opened)
                .map_err(|e| StoreError::io("finishing", &opened, &e))?;
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            if len != size {
                return Err(StoreError::new(
                    ErrorKind::Other,
                    format!(
                        "{} holds {len} bytes, {size} were uploaded",
                        opened.display()
                    ),
                ));
            }
            stamp(&file, &opened, modified)?;
            Ok(file)
        });
        let result = match file.await {
            Ok(file) => match self.flush_before_naming(Arc::new(file)).await {
                Ok(()) => blocking(move || place(&temp, &path, create_only)).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        if result.is_err() {
            let _ = std::fs::remove_file(&upload.id);
        }
        stop::done(upload.ticket);
        result?;
        Ok(PutResult {
            etag: md5s.map(|m| {
                if m.len() == 1 {
                    hex::encode(m[0])
                } else {
                    multipart_etag(&m)
                }
            }),
        })
    }

    async fn abort(&self, upload: Upload) {
        let _ = tokio::fs::remove_file(&upload.id).await;
        stop::done(upload.ticket);
    }

    async fn pending_uploads(&self, under: &str) -> Result<Vec<PendingUpload>, StoreError> {
        let root = self.root.clone();
        let under = under.to_string();
        blocking(move || Ok(find_temp_files(&root, &under))).await
    }

    async fn abort_pending(&self, upload: &PendingUpload) -> Result<(), StoreError> {
        let path = PathBuf::from(&upload.id);
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StoreError::io("removing", &path, &e))
            }
            _ => Ok(()),
        }
    }

    async fn delete_if_match(&self, key: &str, etag: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let etag = etag.to_string();
        let current = blocking(move || Ok(file_md5(&path).map(hex::encode))).await?;
        match current {
            None => Ok(()),
            // Best effort: another writer may slip in between this check and the delete.
            Some(md5) if md5 == etag => self.delete(key).await,
            Some(_) => Err(StoreError::new(
                ErrorKind::PreconditionFailed,
                format!("{} changed since it was read", self.describe(key)),
            )),
        }
    }

    async fn persist(&self) -> Result<(), StoreError> {
        self.flushers.flush_all(&self.root).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let root = self.root.clone();
        blocking(move || {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StoreError::io("deleting", &path, &e))
                }
                _ => {}
            }
            // Folders emptied by the delete go too, as a bucket has no empty folders.
            let mut dir = path.parent();
            while let Some(d) = dir {
                if d == root || std::fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
            Ok(())
        })
        .await
    }
}

impl LocalStore {
    /// A new staged file for `path` holding `body`, and its MD5. A body in memory (a
    /// small object) is written with the create: one hand-off to a blocking thread.
    async fn write_staged(
        &self,
        path: &Path,
        body: Body,
    ) -> Result<(Staged, File, [u8; 16]), StoreError> {
        let (store, target, bytes) = (self.clone(), path.to_path_buf(), body.as_bytes().cloned());
        let (staged, file, written) = blocking(move || {
            let (staged, file) = store.create_staged(&target)?;
            let written = bytes.map(|b| {
                file.write_all_at(&b, 0)
                    .map(|_| <[u8; 16]>::from(Md5::digest(&b)))
            });
            Ok((staged, file, written))
        })
        .await?;
        let written = match written {
            Some(Ok(md5)) => Ok((file, md5)),
            Some(Err(e)) => Err(StoreError::io("writing", path, &e)),
            None => write_body(file, path.to_path_buf(), 0, body).await,
        };
        match written {
            Ok((file, md5)) => Ok((staged, file, md5)),
            Err(e) => {
                discard(staged, true);
                Err(e)
            }
        }
    }

    /// Check, flush and move a staged file into place; the staging comes back for
    /// [`discard`].
    async fn put_staged(
        &self,
        file: File,
        staged: Staged,
        path: &Path,
        md5: [u8; 16],
        options: &PutOptions,
    ) -> (Result<PutResult, StoreError>, Staged) {
        if options.content_md5.is_some_and(|expected| expected != md5) {
            let error = StoreError::new(
                ErrorKind::ChecksumMismatch,
                format!(
                    "writing {}: Content-MD5 does not match the bytes",
                    path.display()
                ),
            );
            return (Err(error), staged);
        }
        let file = Arc::new(file);
        if let Err(e) = self.flush_before_naming(file.clone()).await {
            return (Err(e), staged);
        }
        let (path, temp) = (path.to_path_buf(), staged.temp());
        let (condition, modified) = (options.condition.clone(), options.modified);
        let placed = blocking(move || {
            // Best effort: another writer may slip in between this check and the rename.
            if let Condition::IfMatch(etag) = &condition {
                let current = file_md5(&path).map(hex::encode);
                if current.as_deref() != Some(etag.as_str()) {
                    return Err(StoreError::new(
                        ErrorKind::PreconditionFailed,
                        format!("{} changed since it was read", path.display()),
                    ));
                }
            }
            // The time reaches the disk with the name (a crash in between leaves the
            // bytes whole under another time: the next run copies them again).
            stamp(&file, &path, modified)?;
            place_staged(
                &file,
                temp.as_deref(),
                &path,
                condition == Condition::IfAbsent,
            )
        })
        .await;
        (
            placed.map(|()| PutResult {
                etag: Some(hex::encode(md5)),
            }),
            staged,
        )
    }
}

/// Remove a staged file's temporary name (when `failed`) and forget it.
fn discard(staged: Staged, failed: bool) {
    if let Staged::Named { temp, ticket } = staged {
        if failed {
            let _ = std::fs::remove_file(&temp);
        }
        stop::done(ticket);
    }
}

/// A file read in chunks, off the async threads.
fn read_stream(file: File, path: PathBuf, offset: u64, len: u64) -> super::ByteStream {
    futures::stream::unfold(Some((file, offset, len)), move |state| {
        let path = path.clone();
        async move {
            let (mut file, offset, left) = state?;
            if left == 0 {
                return None;
            }
            let read = blocking(move || {
                let want = left.min(READ_CHUNK as u64) as usize;
                let mut buf = vec![0u8; want];
                file.seek(SeekFrom::Start(offset))
                    .and_then(|_| file.read_exact(&mut buf))
                    .map_err(|e| StoreError::io("reading", &path, &e))?;
                Ok((file, Bytes::from(buf)))
            })
            .await;
            match read {
                Ok((file, chunk)) => {
                    let n = chunk.len() as u64;
                    Some((Ok(chunk), Some((file, offset + n, left - n))))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PartSlot;
    use std::os::unix::fs::PermissionsExt;

    async fn keys(store: &LocalStore) -> Vec<String> {
        let mut out = Vec::new();
        let mut pages = store.list("");
        while let Some(page) = pages.next().await {
            out.extend(page.unwrap().into_iter().map(|o| o.key));
        }
        out
    }

    #[tokio::test]
    async fn lists_in_s3_byte_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        for key in ["a-b", "a/x", "a/b/c", "a0", "B", "é", "z/y"] {
            let path = dir.path().join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
        std::fs::write(dir.path().join(".t.egress-tmp-00ff"), b"tmp").unwrap();
        let mut expected = vec!["a-b", "a/x", "a/b/c", "a0", "B", "é", "z/y"];
        expected.sort();
        assert_eq!(keys(&store).await, expected);
    }

    #[tokio::test]
    async fn writes_appear_whole_private_and_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().join("out"));
        let body = Body::from_bytes(&b"hello"[..]);
        let md5: [u8; 16] = Md5::digest(b"hello").into();
        let put = PutOptions {
            content_md5: Some(md5),
            ..Default::default()
        };
        let done = store.put("d/k.txt", body, &put).await.unwrap();
        assert_eq!(
            done.etag.as_deref(),
            Some("5d41402abc4b2a76b9719d911017c592")
        );
        let file = dir.path().join("out/d/k.txt");
        assert_eq!(std::fs::read(&file).unwrap(), b"hello");
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(dir.path().join("out/d"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        let bad = PutOptions {
            content_md5: Some([0; 16]),
            ..Default::default()
        };
        let err = store
            .put("d/k.txt", Body::from_bytes(&b"other"[..]), &bad)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ChecksumMismatch);
        assert_eq!(
            std::fs::read(&file).unwrap(),
            b"hello",
            "a refused write changes nothing"
        );
        for hostile in ["../x", "a/../../x", "/etc/x", "a//b"] {
            let err = store
                .put(hostile, Body::from_bytes(&b"x"[..]), &PutOptions::default())
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidKey, "{hostile}");
            assert!(
                err.to_string().contains(hostile.trim_start_matches('/')),
                "{err}"
            );
        }
        assert!(!dir.path().join("x").exists());
        assert_eq!(keys(&store).await, ["d/k.txt"], "no temporary file is left");
    }

    #[tokio::test]
    async fn a_symlinked_folder_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("out")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out/d")).unwrap();
        let store = LocalStore::new(dir.path().join("out"));
        let err = store
            .put("d/k", Body::from_bytes(&b"x"[..]), &PutOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotWritable, "{err}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn parts_land_at_their_offsets_and_complete_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let upload = store
            .create_multipart(
                "m.bin",
                &PutOptions {
                    modified: Some(1_000_000),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        // The second part first: each lands at its own offset whatever the order.
        let mut etags = Vec::new();
        for (number, offset, bytes) in [(2, 3, &b"def"[..]), (1, 0, &b"abc"[..])] {
            let part = PartData {
                slot: PartSlot { number, offset },
                body: Body::from_bytes(bytes),
                content_md5: None,
            };
            etags.push(store.upload_part(&upload, part).await.unwrap());
        }
        let [second, first] = <[String; 2]>::try_from(etags).unwrap();
        assert!(keys(&store).await.is_empty(), "invisible until complete");
        let parts = [
            CompletedPart {
                number: 1,
                etag: first,
            },
            CompletedPart {
                number: 2,
                etag: second,
            },
        ];
        let done = store.complete(upload, &parts, 6).await.unwrap();
        assert!(done.etag.unwrap().ends_with("-2"));
        assert_eq!(std::fs::read(dir.path().join("m.bin")).unwrap(), b"abcdef");
        assert_eq!(store.head("m.bin").await.unwrap().modified, 1_000_000);
        let got = store
            .get(
                "m.bin",
                GetOptions {
                    range: Some((2, 3)),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            got.body.collect().await.unwrap(),
            Bytes::from_static(b"cde")
        );
    }

    #[tokio::test]
    async fn a_file_in_the_way_is_a_configuration_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        let store = LocalStore::new(dir.path().join("file"));
        let err = store.probe(true).await.unwrap_err();
        assert!(err.kind().is_configuration(), "{err}");
    }
}
