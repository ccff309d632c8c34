"""Inside ``unshare`` (new user, mount, pid, net, ipc namespaces; mapped root): build the sandbox.

Run as ``python -I -c <this file> BINDS LINKS TMPFS_MIB LIFELINE_FD COMMAND...`` by ``sandbox.py`` when
bwrap is missing. Builds a root on a private tmpfs with read-only binds of BINDS (comma list), symlinks
LINKS (``path=target`` comma list), a fresh /proc, /dev/null|zero|urandom and a size-capped /tmp
(mounted before the binds, so a bind under /tmp stays visible); chroots into it, drops every
capability for good and runs COMMAND as its child. It stays the namespace's first process (pid 1,
not ptraceable, its parent-death signal set by ``unshare --kill-child``): when COMMAND exits, or the
runner's end of LIFELINE_FD closes (however the runner died), it exits and the kernel kills every
process left in the namespace. COMMAND cannot undo that: it is not pid 1, so clearing its own
parent-death signal, leaving the process group or exec'ing away its own watcher changes nothing.
Standard library only.
"""

import ctypes
import os
import sys
import threading

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_SET_SECUREBITS = 4, 38, 24, 28
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


def stay_first(command, lifeline):
    """Run ``command`` as pid 2 and exit with its status, or at once when the lifeline ends."""
    child = os.fork()
    if child == 0:
        os.execv(command[0], command)
    check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "dumpable")
    # the program's pipes are the program's alone: they end when its processes do
    os.closerange(0, lifeline if lifeline >= 0 else 65536)
    if lifeline >= 0:
        os.closerange(lifeline + 1, 65536)

        def watch():
            try:
                os.read(lifeline, 1)
            finally:
                os._exit(137)

        threading.Thread(target=watch, daemon=True).start()
    code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
    os._exit(code if code >= 0 else 128 - code)


def main():
    binds, links, tmpfs_mib, lifeline, command = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:]
    paths = [*filter(None, binds.split(",")), "/dev/null", "/dev/zero", "/dev/urandom"]
    # held open before the staging tmpfs covers /tmp: a venv or checkout under /tmp is bound from its
    # descriptor, which the mount over its path does not hide
    sources = {path: os.open(path, os.O_PATH) for path in paths}
    mount("none", "/", flags=MS_REC | MS_PRIVATE)
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=0755")
    root = "/tmp/root"
    os.mkdir(root)
    # the sandbox's own /tmp first, so binds under /tmp land on it instead of being covered by it
    os.makedirs(f"{root}/tmp")
    mount("tmpfs", f"{root}/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_mib}m,mode=1777")
    for path, fd in sources.items():
        bind_read_only(f"/proc/self/fd/{fd}", root + path)
        os.close(fd)
    for entry in filter(None, links.split(",")):
        path, target = entry.split("=", 1)
        os.symlink(target, root + path)
    mount(None, f"{root}/dev/null", flags=MS_BIND | MS_REMOUNT | MS_NOSUID)  # writable, like /dev/null
    os.makedirs(f"{root}/proc")
    mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chroot(root)
    os.chdir("/tmp")
    drop_capabilities()
    stay_first(command, lifeline)


if __name__ == "__main__":
    main()
