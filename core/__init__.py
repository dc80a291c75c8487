"""Pure-Python logic of the iCCA early-recurrence dashboard (no Streamlit here)."""
