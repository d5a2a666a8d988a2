from lanalyze.cli import main

main()
