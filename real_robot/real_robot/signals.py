"""Ctrl-C and SIGTERM for the package's processes: rclpy's own SIGINT handler shuts the context down at
any moment (a signal during start-up was swallowed and the process spun on); instead both signals raise
KeyboardInterrupt in the main thread, where each ``main`` decides what to do (hold, exit 130)."""
from __future__ import annotations

import signal


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def init_with_interrupts(rclpy, args=None) -> None:
    """``rclpy.init`` without rclpy's signal handlers; SIGINT / SIGTERM raise KeyboardInterrupt."""
    try:
        from rclpy.signals import SignalHandlerOptions

        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except (ImportError, TypeError):  # an rclpy without the option: its handler stays
        rclpy.init(args=args)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def ignore_interrupts() -> None:
    """From here on (shutting down) a second Ctrl-C or launch's SIGTERM cannot cut the shutdown short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def shutdown(rclpy) -> None:
    if rclpy.ok():
        rclpy.shutdown()


def run_node(build, name: str, args=None, multithreaded: bool = False) -> int:
    """A package process: rclpy started with the interrupts above, ``build()`` (an object with ``.node``) spun
    until Ctrl-C / SIGTERM / an external shutdown. Exit status 0; 130 when stopped while starting; 2 (the
    error on stderr) when ``build`` refuses, e.g. its parameters."""
    import sys

    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor

    init_with_interrupts(rclpy, args)
    try:
        built = build()
    except KeyboardInterrupt:  # stopped while starting
        shutdown(rclpy)
        return 130
    except Exception as error:
        print(f"{name}: error: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        shutdown(rclpy)
        return 2
    executor = MultiThreadedExecutor() if multithreaded else SingleThreadedExecutor()
    executor.add_node(built.node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        ignore_interrupts()
        executor.shutdown()
        built.node.destroy_node()
        shutdown(rclpy)
    return 0
