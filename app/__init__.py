"""The hybridlab dashboard: `streamlit run app/main.py`. A thin view over the library and the job engine."""
