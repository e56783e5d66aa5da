//! The real-node lab's fault-injectable disk, mounted for real (FUSE, as root): what passes
//! through, and what each fault does to a process using it.

use std::{
    fs,
    io::{Read, Write},
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::mpsc,
    time::{Duration, Instant},
};

use pulsecheck_lab::faultfs::{DiskFault, FaultDisk};

/// Upper bound of every wait.
const DEADLINE: Duration = Duration::from_secs(20);

fn mounted(dir: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_str().unwrap();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(dir))
}

fn is_eio(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EIO)
}

#[test]
fn the_disk_passes_through_then_errors_hangs_and_recovers_as_switched() {
    let tmp = tempfile::tempdir().unwrap();
    let backing = tmp.path().join("backing");
    let mnt = tmp.path().join("mnt");
    fs::create_dir_all(backing.join("etc")).unwrap();
    fs::create_dir_all(&mnt).unwrap();
    fs::write(backing.join("etc/os-release"), "PRETTY_NAME=\"Lab Linux\"\n").unwrap();
    let disk = FaultDisk::mount(&backing, &mnt).expect("mount the fault disk (needs root and /dev/fuse)");
    assert!(mounted(&mnt), "mounted at {}", mnt.display());

    // Healthy: reads, writes, directories, renames, permissions and symlinks pass through.
    assert_eq!(fs::read_to_string(mnt.join("etc/os-release")).unwrap(), "PRETTY_NAME=\"Lab Linux\"\n");
    fs::create_dir_all(mnt.join("var/lib/kubelet/pods")).unwrap();
    let mut f = fs::File::create(mnt.join("var/lib/kubelet/state.tmp")).unwrap();
    f.write_all(b"checkpoint").unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::rename(mnt.join("var/lib/kubelet/state.tmp"), mnt.join("var/lib/kubelet/state")).unwrap();
    assert_eq!(fs::read(backing.join("var/lib/kubelet/state")).unwrap(), b"checkpoint");
    fs::set_permissions(mnt.join("var/lib/kubelet/state"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::metadata(backing.join("var/lib/kubelet/state")).unwrap().permissions().mode() & 0o777, 0o600);
    std::os::unix::fs::symlink("state", mnt.join("var/lib/kubelet/link")).unwrap();
    assert_eq!(fs::read(mnt.join("var/lib/kubelet/link")).unwrap(), b"checkpoint");
    let mut names: Vec<String> = fs::read_dir(mnt.join("var/lib/kubelet")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["link", "pods", "state"]);
    fs::remove_file(mnt.join("var/lib/kubelet/link")).unwrap();
    fs::remove_dir(mnt.join("var/lib/kubelet/pods")).unwrap();

    // Only /etc/os-release fails (cadvisor then reports osImage "Unknown"); everything else works.
    disk.switch().fail_file("etc/os-release", true);
    let err = fs::read_to_string(mnt.join("etc/os-release")).unwrap_err();
    assert!(is_eio(&err), "{err}");
    assert!(mnt.join("etc/os-release").exists(), "the file is still listed");
    assert_eq!(fs::read(mnt.join("var/lib/kubelet/state")).unwrap(), b"checkpoint");
    disk.switch().fail_file("etc/os-release", false);
    assert!(fs::read_to_string(mnt.join("etc/os-release")).is_ok());

    // The whole disk errors.
    disk.switch().set(DiskFault::Error);
    let err = fs::read(mnt.join("var/lib/kubelet/state")).unwrap_err();
    assert!(is_eio(&err), "{err}");
    let err = fs::write(mnt.join("var/lib/kubelet/new"), b"x").unwrap_err();
    assert!(is_eio(&err), "{err}");
    disk.switch().set(DiskFault::Healthy);

    // The whole disk hangs: a read blocks until the disk recovers, then completes.
    let mut open = fs::File::open(mnt.join("etc/os-release")).unwrap();
    disk.switch().set(DiskFault::Hang);
    let (done, finished) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut content = String::new();
        let result = open.read_to_string(&mut content).map(|_| content);
        let _ = done.send(());
        result
    });
    let deadline = Instant::now() + DEADLINE;
    while disk.switch().blocked() == 0 {
        assert!(Instant::now() < deadline, "the read never reached the hung disk");
        std::thread::yield_now();
    }
    assert!(finished.try_recv().is_err(), "the read finished on a hung disk");
    disk.switch().set(DiskFault::Healthy);
    finished.recv_timeout(DEADLINE).expect("the read completes once the disk recovers");
    assert_eq!(reader.join().unwrap().unwrap(), "PRETTY_NAME=\"Lab Linux\"\n");

    // Unmounted on drop, even with an operation still hanging.
    disk.switch().set(DiskFault::Hang);
    let hung = mnt.join("etc/os-release");
    let stuck = std::thread::spawn(move || fs::read(hung));
    while disk.switch().blocked() == 0 {
        assert!(Instant::now() < deadline + DEADLINE, "the read never reached the hung disk");
        std::thread::yield_now();
    }
    drop(disk);
    let result = stuck.join().unwrap();
    assert!(result.is_err(), "a read hung at unmount fails: {result:?}");
    assert!(!mounted(&mnt), "still mounted after drop");
}
