"""Polling helper shared by the tests that wait on threads or other processes."""
import time


def wait_for(condition, timeout, step=0.02):
    """Poll ``condition()`` every ``step`` seconds until it is true or ``timeout`` seconds pass; its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(step)
    return condition()
