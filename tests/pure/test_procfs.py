"""/proc/net/unix as the kernel prints it, including the lines a path can forge."""

from __future__ import annotations

from udskit.procnet import decode_proc_net_unix, socket_inode_of_link

HEADER = b"Num       RefCount Protocol Flags    Type St Inode Path\n"


def test_decodes_named_unnamed_and_spaced_paths() -> None:
    text = HEADER + (
        b"0000000000000000: 00000002 00000000 00010000 0001 01 4242 /run/a b.sock\n"
        b"0000000000000000: 00000003 00000000 00000000 0001 03 4243\n"
        b"0000000000000000: 00000002 00000000 00000000 0002 01 4244 @name@tail\n"
    )
    a, b, c = decode_proc_net_unix(text)
    assert (a.inode, a.name, a.listening, a.type) == (4242, b"/run/a b.sock", True, 1)
    assert (b.inode, b.name, b.state) == (4243, None, 3)
    assert (c.name, c.type) == (b"@name@tail", 2)


def test_a_path_with_a_newline_cannot_break_the_decoder() -> None:
    text = HEADER + (
        b"0000000000000000: 00000002 00000000 00010000 0001 01 4242 /tmp/x\n"
        b"0000: 00000002 00000000 00010000 0001 01 zz end\n"
        b"garbage\n"
        b"0000000000000000: 00000002 00000000 00010000 0001 01 4245 /tmp/ok\n"
    )
    assert [(e.inode, e.name) for e in decode_proc_net_unix(text)] == [
        (4242, b"/tmp/x"),
        (4245, b"/tmp/ok"),
    ]


def test_socket_links() -> None:
    assert socket_inode_of_link("socket:[123]") == 123
    assert socket_inode_of_link("pipe:[123]") is None
