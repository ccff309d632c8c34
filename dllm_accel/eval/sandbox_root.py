"""Inside ``unshare`` (new user, mount, pid, net, ipc namespaces; mapped root): build the sandbox.

Run as ``python -I -c <this file> BINDS LINKS TMPFS_MIB COMMAND...`` by ``sandbox.py`` when bwrap is
missing. Builds a root on a private tmpfs with read-only binds of BINDS (comma list), symlinks
LINKS (``path=target`` comma list), a fresh /proc, /dev/null|zero|urandom and a size-capped /tmp;
chroots into it, drops every capability for good and executes COMMAND. Standard library only.
"""

import ctypes
import os
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_SET_SECUREBITS = 38, 24, 28
SECURE_NOROOT_AND_LOCKS = 0x2F  # NOROOT, NOROOT_LOCKED, NO_SETUID_FIXUP, NO_SETUID_FIXUP_LOCKED
libc = ctypes.CDLL(None, use_errno=True)


def check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source, target, fstype=None, flags=0, data=None):
    encode = lambda text: None if text is None else text.encode()  # noqa: E731
    check(libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)), f"mount {target}")


def bind_read_only(source, target):
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(source, target, flags=MS_BIND | MS_REC)
    mount(None, target, flags=MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def drop_capabilities():
    check(libc.prctl(PR_SET_SECUREBITS, SECURE_NOROOT_AND_LOCKS, 0, 0, 0), "securebits")
    for cap in range(64):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    empty = (ctypes.c_uint32 * 6)()
    check(libc.capset(header, empty), "capset")
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def main():
    binds, links, tmpfs_mib, command = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    mount("none", "/", flags=MS_REC | MS_PRIVATE)
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=0755")
    root = "/tmp/root"
    os.mkdir(root)
    for path in filter(None, binds.split(",")):
        bind_read_only(path, root + path)
    for entry in filter(None, links.split(",")):
        path, target = entry.split("=", 1)
        os.symlink(target, root + path)
    for device in ("null", "zero", "urandom"):
        bind_read_only(f"/dev/{device}", f"{root}/dev/{device}")
    mount(None, f"{root}/dev/null", flags=MS_BIND | MS_REMOUNT | MS_NOSUID)  # writable, like /dev/null
    os.makedirs(f"{root}/proc")
    mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(f"{root}/tmp")
    mount("tmpfs", f"{root}/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_mib}m,mode=1777")
    os.chroot(root)
    os.chdir("/tmp")
    drop_capabilities()
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
