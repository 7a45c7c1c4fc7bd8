"""The controls: the serial and GPIO push buttons and the voice commands."""
