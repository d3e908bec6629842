"""kvmppc: answers ``cap-hpt-max-page-size`` questions for IBM POWER KVM hosts."""

__version__ = "0.1.0"
